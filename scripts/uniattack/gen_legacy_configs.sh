#!/usr/bin/env bash
# Writes the legacy configuration fixtures again from the code that wrote
# them: commit c1a3118, before the MoE placement took its options from
# `softmoe` (its `moe` entry was flat, options beside a `kind`).
#
#   scripts/uniattack/gen_legacy_configs.sh [OUT]
#
# Checks c1a3118 out in a temporary git worktree, adds a small example
# there that calls that version's own writers (`ExperimentConfig::to_json`,
# `ClipConfig::save`), runs it and writes into OUT (default: a temporary
# directory, printed at the end):
#   experiment_demo_{la,none}.json  -> tests/fixtures/legacy/
#   clip_{la_custom,soft_last1,none}.json -> crates/clip-moe/tests/fixtures/legacy_moe/
# Then `cmp` each against the committed file: they are byte for byte what
# that version writes. Needs the repository's history and a Rust toolchain.
# It builds in a target directory of its own (CARGO_TARGET_DIR, default
# target/legacy-c1a3118): cargo names a workspace member's artifacts by its
# path relative to the workspace, so the old tree building into this
# checkout's target/ would overwrite the current crates' artifacts.
set -euo pipefail
cd "$(dirname "$0")/../.."
top=$(pwd)
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
parent=$(mktemp -d)
tree=$parent/c1a3118
git worktree add --detach "$tree" c1a3118 >&2
trap 'git -C "$top" worktree remove --force "$tree"; rm -rf "$parent"' EXIT
cat > "$tree/examples/gen_legacy_configs.rs" <<'RS'
use std::path::{Path, PathBuf};

use clip_moe::{ClipConfig, MoeConfig, MoeKind, MoeLayers};
use softmoe::{ExpertInit, FeatureMap, LinearAttentionConfig};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).expect("output directory"));
    let write = |name: &str, text: String| std::fs::write(out.join(name), text);

    let la = uniattack::demo::experiment(Path::new("/data/demo"));
    write("experiment_demo_la.json", la.to_json())?;
    let mut none = la.clone();
    none.model.moe = uniattack::demo::moe_config(MoeKind::None);
    write("experiment_demo_none.json", none.to_json())?;

    let custom = MoeConfig {
        layers: MoeLayers::List(vec![0, 1]),
        num_experts: 3,
        slots_per_expert: 5,
        expert_hidden_dim: Some(24),
        expert_init: ExpertInit::Normal { std: 0.02 },
        normalize: false,
        linear_attention: LinearAttentionConfig {
            feature_map: FeatureMap::Relu,
            normalizer_eps: None,
            ..LinearAttentionConfig::default()
        },
        ..MoeConfig::la_soft_moe()
    };
    let last1 = MoeConfig {
        layers: MoeLayers::Last(1),
        ..MoeConfig::soft_moe()
    };
    for (name, moe) in [
        ("clip_la_custom.json", custom),
        ("clip_soft_last1.json", last1),
        ("clip_none.json", MoeConfig::none()),
    ] {
        ClipConfig::tiny().with_moe(moe).save(out.join(name))?;
    }
    Ok(())
}
RS
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$top/target/legacy-c1a3118}
(cd "$tree" && cargo run -q --example gen_legacy_configs -- "$OUT")
status=0
for f in experiment_demo_la experiment_demo_none; do
    cmp "$OUT/$f.json" "tests/fixtures/legacy/$f.json" || status=1
done
for f in clip_la_custom clip_soft_last1 clip_none; do
    cmp "$OUT/$f.json" "crates/clip-moe/tests/fixtures/legacy_moe/$f.json" || status=1
done
echo "written to $OUT; identical to the committed fixtures: $([ $status = 0 ] && echo yes || echo NO)"
exit $status
