from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import ConfigError, load_config
from pipeline.data.layout import DataError, read_image, read_mask
from pipeline.lineage.checks import check_train_config


def test_overrides_are_typed_and_unknown_keys_fail(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain:\n  lr: 1e-3\n")
    cfg = load_config(path, ["train.batch_size=16", "predict.tta=[]", "model.encoder_weights=none"])
    assert cfg.train.lr == 0.001 and cfg.train.batch_size == 16 and cfg.predict.tta == []
    assert str(cfg.run_dir).endswith("x/fold0")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path, ["train.learning_rate=1"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(path, ["train.batch_size=big"])


@pytest.mark.parametrize("path", sorted(Path("configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_pass_the_training_checks(path):
    cfg = check_train_config(load_config(path, ["model.encoder_weights=none"]))
    assert cfg.train.progressive_epochs < cfg.train.epochs  # the last epochs train at the full size


def test_bad_average_and_progressive_settings_are_named():
    with pytest.raises(ConfigError, match="train.ema"):
        check_train_config(load_config(None, ["train.ema=1.5"]))
    with pytest.raises(ConfigError, match="train.progressive_size"):
        check_train_config(load_config(None, ["train.progressive_epochs=2", "train.progressive_size=[224]"]))


def test_corrupt_image_named(tmp_path):
    p = tmp_path / "0123456789ab_01.jpg"
    p.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="0123456789ab_01.jpg"):
        read_image(p, 32, 48)


def test_read_image_resizes(tiny_data):
    p = sorted((tiny_data / "train").iterdir())[0]
    assert read_image(p).shape == (64, 96, 3)
    assert read_image(p, 32, 48).shape == (32, 48, 3)
    m = read_mask(tiny_data / "train_masks" / (p.stem + "_mask.gif"), 32, 48)
    assert m.shape == (32, 48) and set(np.unique(m)) <= {0, 1}
