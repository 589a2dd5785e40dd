# Shared helpers of the download scripts (sourced, not run).

# fetch URL FILE: download URL to FILE with curl or wget, resuming a partial FILE.
fetch() {
    local url=$1 file=$2
    echo "downloading $url"
    echo "        to $file"
    if command -v curl >/dev/null 2>&1; then
        curl --fail --location --continue-at - --output "$file" "$url"
    elif command -v wget >/dev/null 2>&1; then
        wget --continue --output-document="$file" "$url"
    else
        echo "error: neither curl nor wget is installed" >&2
        exit 1
    fi
}

# need TOOL: fail with a message when TOOL is missing.
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "error: '$1' is needed to unpack; install it first" >&2
        exit 1
    fi
}
