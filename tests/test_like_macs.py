"""`like-macs:NAME[:PRESET]`: a single-frame baseline sized to a video network's MACs, as a rank entry."""

from __future__ import annotations

import pytest

from nas_restore.build import build_model
from nas_restore.genotype import GenotypeError
from nas_restore.profiling import count_flops, input_shape
from nas_restore.rank import RankConfig, resolve_entries
from nas_restore.sources import LIKE_MACS_TOLERANCE, load_genotype, macs_matched_genotype
from search_spaces import find_space
from tests._tiny_model import tiny_genotype


def macs(genotype, h: int, w: int) -> int:
    """Counted independently of the helper: through build_model, as rank's own columns are."""
    frames = int(genotype.space_config.get("frames", 1))
    return count_flops(build_model(genotype), input_shape(frames, h, w)) // 2


@pytest.mark.parametrize("base", ["like-macs:rescnn", "like-macs:prn"])
def test_single_frame_baseline_within_ten_percent_of_a_video_network_at_320x480(base):
    like = tiny_genotype(frames=5, alignment="ofm")                     # a 5-frame video network
    target = macs(like, 320, 480)
    genotype, match = macs_matched_genotype(base, like, (320, 480))
    assert genotype.space_config["frames"] == 1 and genotype.space == base.split(":")[1]
    got = macs(genotype, 320, 480)
    assert abs(got / target - 1) <= LIKE_MACS_TOLERANCE
    assert match["macs"] == got and match["like_macs"] == target and match["macs_ratio"] == pytest.approx(got / target)
    # the sizing did the work: the preset's own single-frame network is far from the target
    spec = find_space(genotype.space)
    preset = spec.to_genotype({}, spec.config("cpu", frames=1), {})
    assert abs(macs(preset, 320, 480) / target - 1) > 2 * LIKE_MACS_TOLERANCE
    assert "MACs at 320x480" in genotype.metadata["note"]


def test_depth_changes_when_width_alone_cannot_reach_the_tolerance():
    # rescnn's MACs per pixel at width c and depth b: ~ 18 b c^2; a target between two widths at the preset's
    # depth is reached by another depth. With a 1 % tolerance the preset depth (7) rarely fits.
    like = tiny_genotype(frames=3)
    genotype, match = macs_matched_genotype("like-macs:rescnn", like, (64, 96), tolerance=0.01)
    assert abs(match["macs_ratio"] - 1) <= 0.01
    assert match["macs"] == macs(genotype, 64, 96)
    assert match["blocks"] != 7 == find_space("rescnn").config("cpu").blocks       # another depth than the preset's
    assert genotype.space_config["blocks"] == match["blocks"] and genotype.space_config["channels"] == match["channels"]
    # at the preset's depth, no width is within 1 %: that is why the depth moved
    spec = find_space("rescnn")
    closest = min((abs(macs(spec.to_genotype({}, spec.config("cpu", frames=1, channels=c), {}), 64, 96)
                       / match["like_macs"] - 1) for c in range(6, 14)))
    assert closest > 0.01


def test_like_macs_errors_name_the_fix():
    like = tiny_genotype(frames=3)
    with pytest.raises(GenotypeError, match="without architecture choices.*random:N"):
        macs_matched_genotype("like-macs:tmics", like, (64, 96))
    with pytest.raises(GenotypeError, match="among the entries of `nas-restore rank`"):
        load_genotype("like-macs:rescnn")
    with pytest.raises(GenotypeError, match="no rescnn network within"):
        macs_matched_genotype("like-macs:rescnn", like, (64, 96), tolerance=0.0)


def test_rank_resolves_a_like_macs_entry_against_the_like_genotype(tmp_path):
    like = tiny_genotype(frames=5)
    path = tmp_path / "video.json"
    like.save(path)
    config = RankConfig(profile_size=[320, 480])
    entries = resolve_entries([str(path), "like-macs:rescnn"], config)
    assert [e.kind for e in entries] == ["file", "like-macs"]
    baseline = entries[1]
    assert baseline.genotype.space_config["frames"] == 1 and baseline.label == "rescnn-like-macs"
    assert abs(baseline.match["macs_ratio"] - 1) <= LIKE_MACS_TOLERANCE
    assert str(path) in baseline.source
    with pytest.raises(ValueError, match="needs a genotype whose MACs to match"):
        resolve_entries(["like-macs:rescnn"], config)
