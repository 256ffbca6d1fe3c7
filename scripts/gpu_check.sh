#!/usr/bin/env bash
# The first thing to run on a machine with a CUDA GPU (budget: under 8 minutes on an H100/H200).
#
#   bash scripts/gpu_check.sh [--out FILE] [--wheels DIR] [--dry-run]
#
# Steps, each under its own time limit, each logged, none stopping the others:
#   env      GPU, driver, torch / triton / transformers versions; installs the repo without touching
#            its dependencies (pip --no-deps; an offline machine has no registry), else uses it in
#            place (PYTHONPATH); --wheels DIR first installs carried wheels (see --fetch-wheels)
#   tests    the GPU tests: `pytest -m gpu` (compiled kernels against their references, the engine on
#            CUDA: generate, solve in both collab modes, preemption, /v1/solve, a C ABI call, logits
#            against transformers)
#   kernels  benchmarks/test_kernels.py: every kernel's time and GB/s, and its share of a measured
#            1 GiB device-to-device copy
#   decode   benchmarks/test_generate.py: engine vs transformers decode tok/s at batch 1 and 8 (the 0.5B
#            demo model, or its architecture with random weights when the demo model is not installed)
#   solve    `gboost solve --device cuda` on the demo pair, or on tiny random checkpoints when the demo
#            models are not installed (then it is a smoke run, said so in the results)
#   naive    `gboost bench --quick --device cuda` (the engine against plain transformers), if present
# and writes one Markdown results file to paste into benchmarks/RESULTS.md (default: $OUT/gpu_check.md
# when $OUT is set, else gpu_check/gpu_check.md in the repo), logs beside it.
#
#   bash scripts/gpu_check.sh --fetch-wheels DIR   (on a machine with a registry, not the GPU one)
# downloads, for Python 3.12 on x86-64, the wheels of the dependencies a bare CUDA image may lack
# (fastapi, uvicorn, gguf and theirs), to carry along and pass as --wheels DIR.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
DRY=0
RESULTS=""
WHEELS=""
TOTAL_S=465    # the whole run's limit (8 min with margin): each step gets at most what is left
# step limits (seconds): tests kernels decode solve naive
T_TESTS=210 T_KERNELS=120 T_DECODE=90 T_SOLVE=60 T_NAIVE=90
FETCH=(fastapi starlette pydantic pydantic-core annotated-types typing-inspection anyio sniffio uvicorn h11
       click gguf pyyaml sentencepiece httpx httpcore jinja2 markupsafe safetensors tokenizers
       pytest-benchmark py-cpuinfo pytest-timeout hypothesis schemathesis)

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) RESULTS="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
    --fetch-wheels)
      mkdir -p "$2"
      for pkg in "${FETCH[@]}"; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
          --platform any -d "$2" "$pkg" || echo "could not fetch $pkg"
      done
      exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "$RESULTS" ]; then
  if [ -n "${OUT:-}" ]; then RESULTS="$OUT/gpu_check.md"; else RESULTS="$REPO/gpu_check/gpu_check.md"; fi
fi
LOGS="$(dirname "$RESULTS")"
WORK="$(mktemp -d 2>/dev/null || echo /tmp/gpu_check.$$)"
SOLVE_Q="Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"

# ---------------------------------------------------------------------------------------- the plan
plan() {
  cat <<EOF
gpu_check plan (repo $REPO, python $PY, results $RESULTS, logs in $LOGS)
  env      nvidia-smi; $PY -c 'import torch, triton' versions; ${WHEELS:+pip install --no-index --no-deps --target $WORK/site $WHEELS/*.whl; }$PY -m pip install --no-deps --no-build-isolation -e $REPO (else PYTHONPATH=$WORK/pkg, gboost -> engine/)
  tests    [${T_TESTS}s] $PY -m pytest -q -m gpu -rfE --continue-on-collection-errors tests
  kernels  [${T_KERNELS}s] $PY -m pytest -q benchmarks/test_kernels.py -k 'not cpu_' --benchmark-columns=median,rounds
  decode   [${T_DECODE}s] $PY -m pytest -q -s benchmarks/test_generate.py
  solve    [${T_SOLVE}s] $PY -m gboost.cli solve --device cuda --json "<GSM8K question>" (demo pair; else tiny checkpoints: --slm/--llm DIR --prm-kind token_pair --dtype float32)
  naive    [${T_NAIVE}s] $PY -m gboost.cli bench --quick --device cuda (if engine/bench.py exists)
  results  $RESULTS
The whole run stops within ${TOTAL_S}s: a step gets at most the time left, and is skipped under 20s; its limit
stops it with SIGINT first, so pytest still prints what ran.
EOF
}

if [ "$DRY" = 1 ]; then plan; exit 0; fi

cd "$REPO" || exit 2
mkdir -p "$LOGS"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
declare -a ROWS=()

# run NAME LIMIT CMD...: logs to $LOGS/NAME.log, records status and seconds
run() {
  local name="$1" limit="$2"; shift 2
  local log="$LOGS/$name.log"
  local left=$(( TOTAL_S - $(elapsed) ))
  if [ "$left" -lt 20 ]; then
    ROWS+=("| $name | skipped (the ${TOTAL_S}s budget is spent) | 0 |"); echo "== $name: skipped (budget)"; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name ($*)"
  local t0=$(date +%s)
  timeout -s INT -k 15 "$limit" "$@" >"$log" 2>&1
  local rc=$? dt=$(( $(date +%s) - t0 ))
  local status="ok"
  if [ $rc -eq 124 ] || [ $rc -eq 130 ]; then status="TIMEOUT after ${limit}s"; elif [ $rc -ne 0 ]; then status="FAILED (exit $rc)"; fi
  ROWS+=("| $name | $status | $dt |")
  echo "   $status in ${dt}s; log $log"
  tail -n 3 "$log" | sed 's/^/   | /'
}

# ------------------------------------------------------------------------------------------- env
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null) $(git -C "$REPO" status --porcelain 2>/dev/null | wc -l) changed files"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
} >"$LOGS/env.log" 2>&1
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  cat "$LOGS/env.log"
  echo "gpu_check: no CUDA device visible to $PY: nothing to check (see $LOGS/env.log)" >&2
  exit 2
fi
if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$WHEELS"/*.whl >>"$LOGS/env.log" 2>&1 \
    && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e "$REPO" >>"$LOGS/env.log" 2>&1; then
  # the checkout in place: `gboost` is the folder engine/ (kernels/ rides in through engine/kernels)
  echo "pip install -e failed: using the checkout in place (PYTHONPATH)" >>"$LOGS/env.log"
  mkdir -p "$WORK/pkg" && ln -sfn "$REPO/engine" "$WORK/pkg/gboost"
  export PYTHONPATH="$WORK/pkg${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - >>"$LOGS/env.log" 2>&1 <<'EOF'
import importlib, torch, triton
print(f"python: torch {torch.__version__}, triton {triton.__version__}, cuda {torch.version.cuda}")
for m in ("transformers", "fastapi", "uvicorn", "httpx", "gguf", "safetensors", "tokenizers", "pytest_benchmark"):
    try:
        mod = importlib.import_module(m)
        print(f"module {m}: {getattr(mod, '__version__', 'present')}")
    except Exception as e:
        print(f"module {m}: MISSING ({type(e).__name__}) -- tests needing it are collection errors below")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, sm_{p.major}{p.minor}")
EOF
cat "$LOGS/env.log"
unset TRITON_INTERPRET GBOOST_FORCE_TRITON

# ----------------------------------------------------------------------------------------- steps
run tests "$T_TESTS" "$PY" -m pytest -q -m gpu -rfE -p no:cacheprovider --continue-on-collection-errors tests
run kernels "$T_KERNELS" "$PY" -m pytest -q -p no:cacheprovider benchmarks/test_kernels.py -k "not cpu_" \
  --benchmark-columns=median,rounds
run decode "$T_DECODE" "$PY" -m pytest -q -s -p no:cacheprovider benchmarks/test_generate.py --benchmark-columns=median,rounds

if "$PY" -c "from gboost.models import registry as r; import sys; sys.exit(0 if all(r.is_installed(m) for m in ('qwen2.5-coder-0.5b', 'qwen2.5-coder-1.5b')) else 1)" 2>/dev/null; then
  SOLVE_WHAT="the demo pair (0.5B SLM, 1.5B LLM + judge PRM), bf16"
  run solve "$T_SOLVE" "$PY" -m gboost.cli solve --device cuda --json --seed 1 "$SOLVE_Q"
else
  SOLVE_WHAT="tiny random checkpoints (the demo models are not installed here): a smoke run of the CLI on CUDA"
  "$PY" -c "from gboost.testing import write_tiny_checkpoint as w; w('$WORK/slm', 1); w('$WORK/llm', 2)" >/dev/null 2>&1
  printf 'num_simulations = 4\nmax_depth = 3\nmax_step_tokens = 12\n' >"$WORK/search.toml"
  run solve "$T_SOLVE" "$PY" -m gboost.cli solve --device cuda --json --seed 1 --slm "$WORK/slm" --llm "$WORK/llm" \
    --prm-kind token_pair --dtype float32 --config "$WORK/search.toml" "$SOLVE_Q"
fi

if [ -f "$REPO/engine/bench.py" ] && "$PY" -m gboost.cli bench --help >/dev/null 2>&1; then
  run naive "$T_NAIVE" "$PY" -m gboost.cli bench --quick --device cuda
else
  ROWS+=("| naive | not present (no gboost bench in this checkout) | 0 |")
fi

# --------------------------------------------------------------------------------------- results
{
  echo "## GPU check ($(date -u '+%Y-%m-%d'))"
  echo
  echo "Command: \`bash scripts/gpu_check.sh\` (logs: $LOGS). Total $(elapsed) s."
  echo
  echo '```'
  cat "$LOGS/env.log"
  echo '```'
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "### GPU tests (\`pytest -m gpu\`)"
  echo '```'
  grep -E "^(FAILED|ERROR)|passed|failed|error" "$LOGS/tests.log" 2>/dev/null | tail -n 40
  echo '```'
  echo
  echo "### Kernels (median; GB/s = compulsory bytes / time; share of the measured device copy)"
  echo '```'
  sed -n '/kernel timings/,/^=/p' "$LOGS/kernels.log" 2>/dev/null | grep -v "^=" | head -n 120
  grep -E "^(FAILED|ERROR)|passed|failed" "$LOGS/kernels.log" 2>/dev/null | tail -n 10
  echo '```'
  echo
  echo "### Decode throughput, engine vs transformers (greedy, 32 new tokens)"
  echo '```'
  grep -E "^\[decode\]|passed|failed|skipped" "$LOGS/decode.log" 2>/dev/null
  echo '```'
  echo
  echo "### gboost solve on CUDA: $SOLVE_WHAT"
  echo '```'
  tail -c 3000 "$LOGS/solve.log" 2>/dev/null
  echo '```'
  if [ -f "$LOGS/naive.log" ]; then
    echo
    echo "### gboost bench --quick (engine vs plain transformers)"
    echo '```'
    tail -n 60 "$LOGS/naive.log"
    echo '```'
  fi
} >"$RESULTS"
rm -rf "$WORK"
echo "results: $RESULTS ($(elapsed) s)"
