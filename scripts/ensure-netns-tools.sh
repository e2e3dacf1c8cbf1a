#!/usr/bin/env bash
# Installs what the network-fault tests and `openrisk-verifier --network` use to build test hosts
# of their own (ip netns and veth from iproute2, nft from nftables) when it is missing.
set -euo pipefail

if ! command -v ip >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "iproute2 and nftables are missing; run as root to have them installed" >&2
        exit 1
    fi
    echo "installing iproute2 and nftables" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq iproute2 nftables >/dev/null
fi
