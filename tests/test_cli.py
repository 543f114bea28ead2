import pytest

from pipeline.__main__ import main


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["folds", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "f.csv")]) == 2
    err = capsys.readouterr().err
    assert "nowhere/train: not found" in err and "Kaggle layout" in err
    assert not (tmp_path / "f.csv").exists()


def test_train_without_folds_says_what_to_run(tmp_path, capsys):
    code = main(["train", "--config", "configs/demo-mobilenetv3.yaml", "--folds-csv", str(tmp_path / "none.csv")])
    assert code == 2 and "run `make folds` first" in capsys.readouterr().err


def test_stage_help_exits_cleanly():
    for stage in ("demo-data", "folds", "train", "ensemble", "submission", "validate"):
        with pytest.raises(SystemExit) as e:
            main([stage, "--help"])
        assert e.value.code == 0
