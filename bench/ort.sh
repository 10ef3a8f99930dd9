# One ONNX Runtime for every program a benchmark times: sourced by bench/run.sh and
# bench/generate.sh (from the repository root, after they define `log` and ORT_VERSION).

# Checks that the Python at $1 has onnxruntime $ORT_VERSION (else says how to fix it and exits),
# makes sure the project's copy of the same library is installed, and points pipe at it.
use_one_ort() {
  local py=$1 py_ort
  py_ort=$("$py" -c 'import onnxruntime; print(onnxruntime.__version__)')
  if [ "$py_ort" != "$ORT_VERSION" ]; then
    log "$py has onnxruntime $py_ort; this benchmark compares against $ORT_VERSION"
    log "  fix: $py -m pip install onnxruntime==$ORT_VERSION"
    exit 1
  fi
  local lib=.pipe/onnxruntime/libonnxruntime.so.$ORT_VERSION
  [ -f "$lib" ] || scripts/setup --no-build
  export ORT_DYLIB_PATH="$PWD/$lib"   # the library pipe would find by itself; explicit, to be sure
}

# Checks that the pipe binary at $1 loads ONNX Runtime $ORT_VERSION (its `pipe doctor` in $2).
check_pipe_ort() {
  local pipe=$1 out=$2
  "$pipe" doctor > "$out/doctor.txt" 2>&1 || { cat "$out/doctor.txt" >&2; exit 1; }
  grep -q "$ORT_VERSION" "$out/doctor.txt" || {
    cat "$out/doctor.txt" >&2; log "pipe does not load ONNX Runtime $ORT_VERSION"; exit 1; }
}
