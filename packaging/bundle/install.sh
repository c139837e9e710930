#!/bin/sh
# Installs this EdgeKit bundle on the board it runs on (invoke flash runs it; it also works by hand):
#
#   sh install.sh [--prefix DIR] [--no-python-link] [--force]
#
#   --prefix DIR       install under DIR (default /opt/edgekit): DIR/releases/<bundle>, and DIR/current
#                      pointing at it
#   --no-python-link   do not add DIR/current/python to the board's Python (edgekit.pth)
#   --force            install even if the board's architecture or glibc does not fit the bundle
#
# The bundle's SHA256SUMS are checked first. The new release is copied in full before DIR/current is
# switched to it in one rename, so a failed install leaves the previous release in use.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
name=$(basename "$here")
prefix=/opt/edgekit
python_link=yes
force=no
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a folder" >&2; exit 2; }; prefix=$2; shift 2 ;;
        --no-python-link) python_link=no; shift ;;
        --force) force=yes; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$prefix" in
    /*) ;;
    *) echo "install.sh: --prefix must be an absolute path, not $prefix" >&2; exit 2 ;;
esac

fail() { echo "install.sh: $*" >&2; exit 1; }
# A value from share/edgekit/build-info.json (flat "key": "value" lines; no JSON parser on the board).
info() { sed -n "s/^ *\"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$here/share/edgekit/build-info.json"; }

echo "EdgeKit: checking $name"
(cd "$here" && sha256sum -c --quiet SHA256SUMS) || fail "SHA256SUMS do not match: the bundle is damaged, copy it again"

arch=$(info arch)
floor=$(info glibc_floor)
board_arch=$(uname -m)
if [ "$board_arch" != "$arch" ]; then
    [ "$force" = yes ] || fail "this bundle is for $arch, this board is $board_arch (--force to install anyway)"
fi
board_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed 's/^glibc //' || true)
if [ -n "$board_glibc" ]; then
    oldest=$(printf '%s\n%s\n' "$floor" "$board_glibc" | sort -t. -k1,1n -k2,2n | head -n 1)
    if [ "$oldest" != "$floor" ]; then
        [ "$force" = yes ] || fail "this bundle needs glibc >= $floor, this board has $board_glibc (--force to install anyway)"
    fi
fi

mkdir -p "$prefix/releases"
staging="$prefix/releases/.$name.partial"
rm -rf "$staging"
cp -a "$here" "$staging"
if [ -e "$prefix/releases/$name" ]; then
    rm -rf "$prefix/releases/.$name.old"
    mv "$prefix/releases/$name" "$prefix/releases/.$name.old"
fi
mv "$staging" "$prefix/releases/$name"
ln -sfn "releases/$name" "$prefix/.current.new"
mv -T "$prefix/.current.new" "$prefix/current"
rm -rf "$prefix/releases/.$name.old"
echo "EdgeKit: installed $prefix/releases/$name, now $prefix/current"

# Make 'import edgekit' work in the board's Python, when it is the Python the bundle was built for.
suffix=$(info python_ext_suffix)
if [ "$python_link" = yes ] && [ -n "$suffix" ] && [ "$suffix" != null ]; then
    if command -v python3 >/dev/null 2>&1; then
        board_suffix=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
        if [ "$board_suffix" = "$suffix" ]; then
            site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
            mkdir -p "$site"
            echo "$prefix/current/python" > "$site/edgekit.pth"
            echo "EdgeKit: python3 imports edgekit from $prefix/current/python ($site/edgekit.pth)"
        else
            echo "EdgeKit: python3 here takes $board_suffix modules, the bundle has $suffix ones: not linked"
        fi
    else
        echo "EdgeKit: no python3 on this board: the Python package is not linked"
    fi
fi
