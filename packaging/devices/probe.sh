# What invoke doctor asks a board: one key=value per line, from a POSIX shell and coreutils-level tools
# (a board may have no Python). $EDGEKIT_PREFIX is where EdgeKit is installed (default /opt/edgekit).
echo "arch=$(uname -m)"
echo "glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed 's/^glibc //')"
lib=$(ls /usr/lib/*/libstdc++.so.6.0.* /usr/lib/libstdc++.so.6.0.* /lib/*/libstdc++.so.6.0.* 2>/dev/null | head -n 1)
echo "libstdcxx=${lib##*/}"
prefix=${EDGEKIT_PREFIX:-/opt/edgekit}
echo "prefix=$prefix"
info=$prefix/current/share/edgekit/build-info.json
if [ -f "$info" ]; then
    for key in version board arch; do
        echo "installed_$key=$(sed -n "s/^ *\"$key\": \"\([^\"]*\)\",\{0,1\}\$/\1/p" "$info")"
    done
fi
# remote_server=: none in this release; else its --version line, or why it does not run.
server=$prefix/current/bin/remote_server
if [ -e "$server" ]; then
    echo "remote_server=$("$server" --version 2>&1 | head -n 1)"
else
    echo "remote_server="
fi
if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import sys, sysconfig
print("python=%d.%d" % sys.version_info[:2])
print("python_ext_suffix=%s" % sysconfig.get_config_var("EXT_SUFFIX"))'
    python3 -c 'import numpy; print("numpy=" + numpy.__version__)' 2>/dev/null || echo "numpy="
    python3 -c 'import edgekit; print("edgekit_python=" + edgekit.__version__)' 2>/dev/null || echo "edgekit_python="
fi
