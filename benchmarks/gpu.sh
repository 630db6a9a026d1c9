#!/usr/bin/env bash
# The GPU check (issue 13): one script, < 8 minutes on one H100, random weights throughout.
#   1 train     benchmarks/gpu_train.py train: the neurodiff3d train step at
#               configs/neurodiff3d.py:variant=random (SD-1.5 UNet + VAE, CLIP B/32, ResNet-18,
#               adapter; bfloat16, remat), batch 8: step time, examples/s, MFU  [150 s]
#   2 unet      benchmarks/gpu_train.py unet: SD-1.5 UNet forward, batch 2, latent 64, ours
#               (float32, bfloat16) beside diffusers (float32, float16) on the same GPU  [90 s]
#   3 prior     benchmarks/gpu_prior.py: Shap-E 64 Heun steps, batch 1, ours bfloat16 beside
#               diffusers float32 and float16, 1 repeat, plus the 128^3 field query  [110 s]
#   4 generate  benchmarks/gpu_generate.py: seconds per generated object, batch 1, paper
#               settings (50 DDIM steps, K = 4 views, refinement, textures), compiling into a
#               new compilation cache folder, $OUT/xla  [120 s]
#   5 generate_warm  the same in a second process with that folder: its first object with a
#               warm cache (programs loaded, not compiled)  [90 s]
#   6 overlap   32 objects serially and overlapped (host stages beside the device), beside the
#               device bounds, on that cache  [240 s]
# PARTS="generate generate_warm" (say) runs some of them: two device calls fit better than one.
# Each part runs under `timeout`, writes $OUT/<part>_gpu.json (and <part>.log); a failing part
# does not stop the others. The end prints one table and writes $OUT/gpu_summary.json.
# Wheels missing on the device (ml_collections, trimesh, grain, diffusers, ...) come from
# .whl/gen (`make gpu-wheels`; git-ignored: carry it) into /tmp/site, appended to sys.path
# through GEN_SITE.
#
# Device:  run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=540)
# Here:    QUICK=1 bash benchmarks/gpu.sh   (or --quick: tiny sizes on CPU, ~7 min on 2 busy cores)
set -u
cd "$(dirname "$0")/.."
[ "${1:-}" = "--quick" ] && QUICK=1
QUICK=${QUICK:-0}
export OUT=${OUT:-out/gpu} PYTHONPATH=. GEN_SITE=${GEN_SITE:-/tmp/site}
mkdir -p "$OUT"
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ "$QUICK" = 1 ] && PY=.venv/bin/python
T0=$(date +%s)

if ! $PY -c "import ml_collections, trimesh, grain, diffusers" 2>/dev/null; then
  ls .whl/gen/*.whl >/dev/null 2>&1 || echo "gpu.sh: no .whl/gen: run 'make gpu-wheels' here and carry .whl" >&2
  $PY -m pip install -q --no-index --no-deps --target "$GEN_SITE" .whl/gen/*.whl \
    || echo "gpu.sh: wheel install failed; parts needing them will fail" >&2
fi

if [ "$QUICK" = 1 ]; then
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
  Q=--quick; B_TRAIN=2; L=(600 300 300 600 300 600)
else
  Q=; B_TRAIN=8; L=(150 90 110 120 90 240)
fi  # per-part limits (s); override with T_TRAIN, T_UNET, T_PRIOR, T_GEN, T_GEN_WARM, T_OVERLAP
T_TRAIN=${T_TRAIN:-${L[0]}} T_UNET=${T_UNET:-${L[1]}} T_PRIOR=${T_PRIOR:-${L[2]}} T_GEN=${T_GEN:-${L[3]}}
T_GEN_WARM=${T_GEN_WARM:-${L[4]}} T_OVERLAP=${T_OVERLAP:-${L[5]}}
PARTS=${PARTS:-train unet prior generate generate_warm overlap}

run_part() {  # name, timeout, memory fraction for JAX, command...
  local name=$1 limit=$2 frac=$3; shift 3
  case " $PARTS " in *" $name "*) ;; *) return ;; esac
  local t=$(date +%s)
  echo "== $name (limit ${limit}s) ==" >&2
  rm -f "$OUT/${name}_gpu.json"  # no stale figures from an earlier run
  XLA_PYTHON_CLIENT_MEM_FRACTION=$frac timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 3 "$OUT/$name.log" >&2
  echo "{\"rc\": $rc, \"wall_s\": $(($(date +%s) - t)), \"limit_s\": $limit}" >"$OUT/$name.status.json"
}

run_part train "$T_TRAIN" 0.9 $PY benchmarks/gpu_train.py train $Q --batch=$B_TRAIN
run_part unet "$T_UNET" 0.45 $PY benchmarks/gpu_train.py unet $Q --batch=2
run_part prior "$T_PRIOR" 0.45 $PY benchmarks/gpu_prior.py $Q --batches=1 --repeats=1 \
  --our_dtypes=bfloat16 --torch_dtypes=float32,float16
case " $PARTS " in *" generate "*) rm -rf "$OUT/xla" ;; esac  # the first process compiles
run_part generate "$T_GEN" 0.8 $PY benchmarks/gpu_generate.py $Q --batches=1 \
  --texture_faces= --no_outputs --compilation_cache="$OUT/xla"
run_part generate_warm "$T_GEN_WARM" 0.8 $PY benchmarks/gpu_generate.py $Q --batches=1 \
  --texture_faces= --no_outputs --compilation_cache="$OUT/xla" --out_name=generate_warm_gpu.json
run_part overlap "$T_OVERLAP" 0.8 $PY benchmarks/gpu_generate.py $Q --batches=1 \
  --texture_faces= --no_outputs --compilation_cache="$OUT/xla" --overlap=32 \
  --out_name=overlap_gpu.json

PARTS=$PARTS TOTAL=$(($(date +%s) - T0)) $PY - <<'EOF'
import json, os

out, summary, rows = os.environ["OUT"], {"total_s": int(os.environ["TOTAL"])}, []
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def g(x, *keys):
    for k in keys:
        x = x.get(k) if isinstance(x, dict) else (x[k] if isinstance(x, list) and len(x) > k else None)
    return x
def figures(part, r):
    if part == "train":
        mfu = r.get("mfu")
        return {"step_s": r["step_s"], "examples_per_s": r["examples_per_s"],
                "mfu": mfu, "batch": r["batch"], "compile_s": r["compile_s"]}
    if part == "unet":
        return {k: v for k, v in r.items() if k.endswith("_s")}
    if part == "prior":
        f = {f"{s['impl']}_{s['dtype']}_b{s['batch']}_s_per_object": s["s_per_object"]
             for s in r.get("sampling", [])}
        f.update({f"field_{k}": v for k, v in (r.get("field") or {}).items() if k.endswith("median_s")})
        return f
    run = g(r, "runs", "batch_1") or {}
    over = {f"overlap_{k}": v for k, v in (r.get("overlap") or {}).items()}
    return {"coarse_extraction_128_s": r.get("coarse_extraction_128_s"),
            **{k: v for k, v in {**run, **over}.items() if isinstance(v, (int, float))}}
for part in os.environ["PARTS"].split():
    status, r = load(f"{part}.status.json") or {}, load(f"{part}_gpu.json")
    rc = status.get("rc")
    state = "ok" if rc == 0 and r else ("timeout" if rc in (124, 137) else f"failed rc={rc}")
    try:
        fig = figures(part, r) if r else {}
    except (KeyError, TypeError) as e:
        fig = {"error": f"unexpected JSON: {e!r}"}
    summary[part] = {"state": state, **status, "figures": fig}
    def fmt(v):
        if isinstance(v, dict):
            return "{" + " ".join(f"{k}={fmt(x)}" for k, x in v.items()) + "}"
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    text = ", ".join(f"{k}={fmt(v)}" for k, v in fig.items()) or f"see {out}/{part}.log"
    rows.append(f"| {part} | {state} | {status.get('wall_s', '')} | {text} |")
print("| part | state | wall s | figures |\n|---|---|---|---|\n" + "\n".join(rows))
print(f"total {summary['total_s']} s; JSON in {out}/gpu_summary.json")
with open(os.path.join(out, "gpu_summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
EOF
