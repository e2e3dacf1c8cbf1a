# shellcheck shell=bash
# Sourced by the scripts that start servers of their own (scripts/test-api.sh,
# load_tests/hit_instructions.sh, load_tests/api_ab.sh), run from the repository root.
#
# free_port   prints a TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
