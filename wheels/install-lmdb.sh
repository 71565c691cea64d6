#!/bin/sh
# cibuildwheel's before-all on Linux: install LMDB's library and header from the build image's own packages.
# The repair step (auditwheel) then copies liblmdb into the wheel. Nothing of LMDB's source lives in this repo.
set -eu
if command -v apk >/dev/null 2>&1; then          # musllinux (Alpine)
    apk add --no-cache lmdb-dev
elif command -v dnf >/dev/null 2>&1; then        # manylinux_2_28 (AlmaLinux 8), manylinux_2_34 (AlmaLinux 9)
    dnf install -y lmdb-devel \
        || { dnf install -y epel-release && dnf install -y lmdb-devel; } \
        || dnf install -y --enablerepo=powertools lmdb-devel \
        || dnf install -y --enablerepo=crb lmdb-devel
elif command -v yum >/dev/null 2>&1; then        # manylinux2014 (CentOS 7): EPEL
    yum install -y epel-release && yum install -y lmdb-devel
elif command -v apt-get >/dev/null 2>&1; then    # a Debian/Ubuntu host
    apt-get install -y liblmdb-dev || { apt-get update && apt-get install -y liblmdb-dev; }
else
    echo "install-lmdb.sh: no known package manager here; install LMDB (lmdb.h and liblmdb) yourself" >&2
    exit 1
fi
