#!/bin/sh
# /init of the netfn VM-test initramfs, written by `cargo xtask vm-test` (docs/vm-tests.md).
# The host reads the serial console and looks for these lines:
#   NETFN-VM: ...                       progress and facts about the guest
#   NETFN-VM-TEST-BEGIN: <name>         a test binary starts
#   NETFN-VM-TEST-END: <name> rc=<n>    it ended with exit status n
#   NETFN-VM-RESULT: PASS | FAIL <names...>
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp USER=root

say() { echo "NETFN-VM: $*"; }

finish() {
    echo "NETFN-VM-RESULT: $*"
    sync
    poweroff -f
    # Not reached unless poweroff failed: make the kernel panic, and QEMU (-no-reboot) exit.
    exit 1
}

say "init started"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
# /tmp stays on the initramfs root (already in RAM): a tmpfs here would hide a checkout that
# lives under /tmp on the host, whose test files are copied in at their host paths.
mkdir -p /tmp && chmod 1777 /tmp
mount -t bpf bpf /sys/fs/bpf || say "cannot mount bpffs on /sys/fs/bpf"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || say "cannot mount cgroup2 on /sys/fs/cgroup"
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
hostname netfn-vm
ip link set lo up

mem=$(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo)
say "kernel $(uname -r), $(nproc) cpus, ${mem} MiB"
if [ -e /sys/kernel/btf/vmlinux ]; then btf=yes; else btf=no; fi
say "btf=$btf bpf_jit_enable=$(cat /proc/sys/net/core/bpf_jit_enable 2>/dev/null || echo none)"

moddir=/lib/modules/$(uname -r)
loaded=""
if [ -s /etc/netfn/modules ]; then
    while read -r mod; do
        name=${mod##*/}
        if insmod "$moddir/$mod"; then
            loaded="$loaded ${name%.ko}"
        else
            say "WARNING: cannot load module $mod"
        fi
    done < /etc/netfn/modules
fi
say "modules loaded:${loaded:- none}"

# Extra arguments for every test binary, one per line (from `cargo xtask vm-test -- ARGS`).
set --
if [ -f /etc/netfn/args ]; then
    while IFS= read -r arg; do set -- "$@" "$arg"; done < /etc/netfn/args
fi

export NETFN_BIN=/bin/netfn NETFN_IN_VM=1 RUST_BACKTRACE=1
workdir=$(cat /etc/netfn/workdir 2>/dev/null)
cd "${workdir:-/}" || cd /
export CARGO_MANIFEST_DIR="$PWD"

# `netfn.shard=K/N` on the kernel command line (`vm-test --shards N`): this VM runs the tests
# the host listed for it in /etc/netfn/shard-K (`binary test` per line; the host spread the
# suite's tests, after the filters in the arguments, over the N VMs by their recorded times),
# `--exact` by name, skipping a binary with none. Without it, every test.
shard=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^netfn\.shard=//p')
plan=""
if [ -n "$shard" ]; then
    plan=/etc/netfn/shard-${shard%/*}
    [ -f "$plan" ] || finish "FAIL (no $plan for shard $shard)"
    say "shard $shard: $(grep -c . "$plan") tests listed by the host"
fi

failed=""
count=0
for test in /tests/*; do
    [ -x "$test" ] || continue
    name=${test##*/}
    exact=""
    if [ -n "$plan" ] && [ "$name" != zz_injected_failure ]; then
        # The names of this shard's tests; `--exact` runs those (and libtest's own filters,
        # made exact, then match nothing more).
        mine=$(awk -v b="$name" '$1 == b { print $2 }' "$plan")
        [ -n "$mine" ] || continue
        exact="--exact $mine"
    fi
    count=$((count + 1))
    echo "NETFN-VM-TEST-BEGIN: $name"
    # shellcheck disable=SC2086 # one argument per test name (names have no spaces)
    "$test" "$@" $exact < /dev/null
    rc=$?
    echo "NETFN-VM-TEST-END: $name rc=$rc"
    [ "$rc" -eq 0 ] || failed="$failed $name"
done
say "ran $count test binaries"

if [ -n "$failed" ]; then
    finish "FAIL$failed"
fi
finish "PASS"
