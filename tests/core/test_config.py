"""The typed config (pipeline/core/config.py): overrides typed, unknown keys refused, old keys read."""

import pytest
import torch

from pipeline.core.config import ConfigError, config_from_dict, load_config
from pipeline.models.unet import build_model, load_checkpoint_model
from tests.conftest import tiny_config


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


def test_old_amp_keys_load_and_bad_values_name_the_key(tiny_data, tmp_path):
    old = {"amp": True, "amp_dtype": "bfloat16", "channels_last": True}
    assert config_from_dict({"train": old}).train.amp == "auto"  # bf16 on CUDA, fp32 on CPU: as before
    assert config_from_dict({"train": {"amp": True, "amp_dtype": "float16"}}).train.amp == "fp16"
    assert config_from_dict({"train": {"amp": False, "amp_dtype": "float16"}}).train.amp == "off"
    assert load_config(None, ["train.amp=false"]).train.amp == "off"  # the README's old advice still works
    # A checkpoint written before the change (its config dict says amp: true, amp_dtype: float16) loads.
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    saved = cfg.to_dict()
    saved["train"].update(amp=True, amp_dtype="float16", channels_last=True)
    del saved["predict"]["amp"]
    torch.save({"config": saved, "model": build_model(cfg.model).state_dict()}, tmp_path / "old.pt")
    _, loaded = load_checkpoint_model(tmp_path / "old.pt")
    assert (loaded.train.amp, loaded.train.channels_last, loaded.predict.amp) == ("fp16", True, "auto")
    for bad, key in (
        ({"train": {"amp": "fp8"}}, "train.amp='fp8'"),
        ({"predict": {"amp": "half"}}, "predict.amp='half'"),
        ({"train": {"channels_last": "maybe"}}, "train.channels_last='maybe'"),
        ({"train": {"amp": True, "amp_dtype": "fp8"}}, "train.amp_dtype='fp8'"),
        ({"train": {"amp": "bf16", "amp_dtype": "float16"}}, "train.amp_dtype: replaced by train.amp"),
    ):
        with pytest.raises(ConfigError, match=key.replace("(", r"\(")):
            config_from_dict(bad)
