#!/usr/bin/env bash
# The test command of the README: set up (idempotent), run pytest in .venv, then the LIBERO smoke tests in
# .venv-libero (LIBERO needs robosuite 1.4, so they run in their own interpreter).
#
#   bash scripts/test.sh                       # everything
#   bash scripts/test.sh tests/test_x.py -k y  # pytest arguments go to the main run
#
# The LIBERO run happens when CI=true (it then builds .venv-libero if missing), or when .venv-libero exists and
# either no pytest arguments were given or they name tests/test_libero_env.py. A non-zero pytest exit code,
# including 5 ("no tests collected"), fails the script.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-.venv}
export MUJOCO_GL=${MUJOCO_GL:-egl}

bash scripts/setup.sh || exit 1

"$VENV/bin/python" -m pytest -q "$@"
main_rc=$?
[ $main_rc -eq 5 ] && echo "test.sh: error: pytest collected no tests from: ${*:-tests/}" >&2

libero_rc=0
run_libero=0
if [ "${CI:-}" = "true" ]; then
  bash scripts/setup_libero.sh || exit 1
  run_libero=1
elif [ -x .venv-libero/bin/python ] && { [ $# -eq 0 ] || [[ " $* " == *test_libero_env* ]]; }; then
  run_libero=1
fi
if [ $run_libero -eq 1 ]; then
  echo "test.sh: LIBERO smoke tests in .venv-libero"
  .venv-libero/bin/python -m pytest -q tests/test_libero_env.py -m libero
  libero_rc=$?
  [ $libero_rc -eq 5 ] && echo "test.sh: error: no LIBERO test was collected in .venv-libero" >&2
fi

if [ $main_rc -ne 0 ] || [ $libero_rc -ne 0 ]; then
  echo "test.sh: FAILED (pytest exit codes: main $main_rc, libero $libero_rc)" >&2
  exit 1
fi
echo "test.sh: all tests passed"
