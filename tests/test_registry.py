"""The plugin's lookups and config layering, and a RecBole left as it is."""
import pytest
from conftest import make_model, tiny_config_dict

from recbole_cllm4rec.quick_start import run_model


def test_the_plugin_resolves_its_model_and_trainer_and_falls_back_to_recbole():
    from recbole.utils import ModelType

    from recbole_cllm4rec.model.cllm4rec import CLLM4Rec
    from recbole_cllm4rec.registry import get_model, get_trainer
    from recbole_cllm4rec.trainer import CLLM4RecTrainer

    assert get_model("CLLM4Rec") is CLLM4Rec
    assert get_trainer(ModelType.GENERAL, "CLLM4Rec") is CLLM4RecTrainer
    assert get_model("BPR").__name__ == "BPR"
    assert get_trainer(ModelType.GENERAL, "BPR").__name__ == "Trainer"


def test_nothing_in_recbole_is_rebound_on_import():
    import recbole.config.configurator as configurator
    import recbole.quick_start.quick_start as quick_start
    import recbole.utils as utils
    import recbole.utils.utils as utils_utils

    for module in (utils, utils_utils, configurator, quick_start):
        assert module.get_model.__module__ == "recbole.utils.utils"
    assert configurator.Config._init_device.__module__ == "recbole.config.configurator"
    assert configurator.Config._load_internal_config_dict.__module__ == "recbole.config.configurator"


def test_unknown_model_lists_the_known_names():
    from recbole_cllm4rec.registry import get_model

    with pytest.raises(ValueError, match=r"Unknown model 'NoSuchModel'.*BPR.*CLLM4Rec"):
        get_model("NoSuchModel")


BPR_RUN = """
import json, sys
from recbole_cllm4rec import compat
compat.apply()  # RecBole 1.2.1 does not import under numpy 2 without the shims
if sys.argv[2] == "plugin":
    import recbole_cllm4rec  # noqa: F401
from recbole.config import Config
from recbole.quick_start import run_recbole
settings = {"data_path": sys.argv[1], "epochs": 2, "state": "ERROR", "checkpoint_dir": sys.argv[1] + "/saved-" + sys.argv[2]}
config = Config(model="BPR", dataset="tiny", config_dict=settings)
result = run_recbole(model="BPR", dataset="tiny", config_dict=settings)
ignored = {"checkpoint_dir"}
print("RESULT", json.dumps({"config": {k: repr(v) for k, v in config.final_config_dict.items() if k not in ignored},
                            "test": dict(result["test_result"]), "valid": dict(result["best_valid_result"])}))
"""


def test_recboles_own_bpr_run_is_unchanged_by_importing_the_plugin(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import write_tiny_dataset

    write_tiny_dataset(tmp_path)
    root = Path(__file__).resolve().parent.parent
    runs = {}
    for mode in ("shims", "plugin"):
        out = subprocess.run([sys.executable, "-c", BPR_RUN, str(tmp_path), mode], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(root)})  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        runs[mode] = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert runs["plugin"] == runs["shims"]
    assert runs["shims"]["config"]["topk"] == "[10]"  # RecBole's protocol, not the plugin's


def test_model_defaults_sit_under_user_config(tiny_data):
    from recbole_cllm4rec.registry import Config

    config_file = tiny_data / "mine.yaml"
    config_file.write_text("lambda_c: 0.25\nmask_ratio: 0.5\n")
    config = Config(
        model="CLLM4Rec",
        dataset="tiny",
        config_file_list=[str(config_file)],
        config_dict={"data_path": str(tiny_data), "mask_ratio": 0.3},
    )
    assert config["lambda_c"] == 0.25  # file beats properties/CLLM4Rec.yaml
    assert config["mask_ratio"] == 0.3  # config_dict beats the file
    assert config["pretrain_learning_rate"] == 0.0003  # the plugin default (properties/CLLM4Rec.yaml)
    assert config["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]}  # properties/overall.yaml
    assert config["topk"] == [10, 20, 40, 100]


def test_the_paper_preset_is_one_config_file_over_the_defaults(tiny_data):
    from pathlib import Path

    import yaml

    from recbole_cllm4rec.registry import Config

    properties = Path(__file__).resolve().parent.parent / "properties"
    preset = properties / "presets" / "CLLM4Rec-paper.yaml"
    defaults = yaml.safe_load((properties / "CLLM4Rec.yaml").read_text())
    config = Config(model="CLLM4Rec", dataset="tiny", config_file_list=[str(preset)], config_dict={"data_path": str(tiny_data)})
    paper = yaml.safe_load(preset.read_text())
    assert {k: config[k] for k in paper} == paper
    assert config["readout"] == "last" and config["llm_layers"] is None and config["epochs"] == 150
    # the preset changes what the recommended defaults changed and the protocol's selection, nothing else
    protocol = yaml.safe_load((properties / "overall.yaml").read_text())
    assert {k for k in paper if paper[k] != defaults.get(k)} and set(paper) <= set(defaults) | {"metrics", "valid_metric"}
    assert {"metrics", "valid_metric"} <= set(protocol)


def test_load_data_and_model_restores_a_cllm4rec_checkpoint(tiny_data):
    import torch
    from recbole_cllm4rec.quick_start import load_data_and_model

    result = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data))
    checkpoint = torch.load(result["checkpoint"], weights_only=False)
    assert not any(k.startswith("backbone.") for k in checkpoint["state_dict"])
    config, model, dataset, _, _, test_data = load_data_and_model(result["checkpoint"])
    assert type(model).__name__ == "CLLM4Rec"
    model.eval()
    users = torch.arange(1, 6)
    with torch.no_grad():
        restored = model.full_sort_predict({model.USER_ID: users})
    _, fresh, _ = make_model(tiny_data)
    fresh.load_state_dict(checkpoint["state_dict"])
    fresh.eval()
    with torch.no_grad():
        again = fresh.full_sort_predict({fresh.USER_ID: users})
    torch.testing.assert_close(restored, again)
    assert torch.equal(model.collaborative_item_emb.weight, checkpoint["state_dict"]["collaborative_item_emb.weight"])


def test_a_checkpoint_saved_before_a_new_option_loads_with_its_default(tiny_data, tmp_path):
    import torch
    from recbole_cllm4rec.quick_start import load_data_and_model

    result = run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data))
    checkpoint = torch.load(result["checkpoint"], weights_only=False)
    saved = checkpoint["config"].final_config_dict
    del saved["backbone_learning_rate"]  # as saved by the version before this key
    saved["lora_learning_rate"] = None
    # and the retired research options at the values that behave as the code does now, as saved before they went
    saved.update(readout_skip_exponent=1.0, deep_prompt_tokens=0, llm_norm_tuning=False, item_head="tied", readout_queries=4)
    old = tmp_path / "old.pth"
    torch.save(checkpoint, old)
    config, model, *_ = load_data_and_model(str(old))
    assert config["backbone_learning_rate"] is None
    _, new, *_ = load_data_and_model(result["checkpoint"])
    model.eval()
    new.eval()
    users = torch.arange(1, 6)
    with torch.no_grad():
        torch.testing.assert_close(model.full_sort_predict({model.USER_ID: users}), new.full_sort_predict({new.USER_ID: users}))
    saved["item_head"] = "untied"  # a checkpoint of a removed option: refused, naming the commit that runs it
    torch.save(checkpoint, old)
    with pytest.raises(ValueError, match=r"old\.pth: item_head='untied' is a research option that was removed.*ef9cea6"):
        load_data_and_model(str(old))


def test_a_retired_research_option_is_refused_before_training(tiny_data, monkeypatch):
    import recbole_cllm4rec.quick_start as quick_start
    from recbole_cllm4rec.config_rules import check_retired_options

    monkeypatch.setattr(quick_start, "create_dataset", lambda config: pytest.fail("the data was loaded"))
    with pytest.raises(ValueError, match=r"deep_prompt_tokens=8 is a research option that was removed.*commit ef9cea6"):
        run_model("CLLM4Rec", "tiny", config_dict=tiny_config_dict(tiny_data, deep_prompt_tokens=8))
    check_retired_options({"item_head": "tied", "deep_prompt_tokens": 0})  # today's behaviour: accepted
    check_retired_options({})
    with pytest.raises(ValueError, match=r"readout='queries' is a research option that was removed.*ef9cea6"):
        check_retired_options({"readout": "queries"})


def test_load_data_and_model_restores_a_baseline_checkpoint(tiny_data):
    from recbole_cllm4rec.quick_start import load_data_and_model

    result = run_model("BPR", "tiny", config_dict=tiny_config_dict(tiny_data, epochs=2))
    config, model, *_ = load_data_and_model(result["checkpoint"])
    assert type(model).__name__ == "BPR" and config["epochs"] == 2


def test_paper_recall_divides_by_min_of_k_and_held_out():
    import torch
    from recbole.evaluator.collector import DataStruct

    from recbole_cllm4rec.metrics import PaperRecall

    struct = DataStruct()
    # per user: hit flags of the top 3, then the number of held-out items
    struct.set("rec.topk", torch.tensor([[1, 0, 0, 4], [0, 1, 1, 2], [0, 0, 0, 1]]))
    metric = PaperRecall({"topk": [1, 3], "metric_decimal_place": 4})
    result = metric.calculate_metric(struct)
    # @1: 1/min(1,4), 0, 0; @3: 1/min(3,4), 2/min(3,2), 0
    assert result == {"paperrecall@1": round(1 / 3, 4), "paperrecall@3": round((1 / 3 + 1) / 3, 4)}


def test_paper_recall_runs_as_a_recbole_metric(tiny_data):
    from conftest import tiny_config_dict

    from recbole_cllm4rec.quick_start import run_model

    config = tiny_config_dict(tiny_data, metrics=["Recall", "PaperRecall"], epochs=1, pretrain_epochs=0, content_warmup_epochs=0)
    result = run_model("Pop", "tiny", config_dict=config)["test_result"]
    assert result["paperrecall@10"] >= result["recall@10"] > 0


def test_a_dataset_preset_sits_under_the_users_config_files():
    from pathlib import Path

    from recbole_cllm4rec.registry import Config

    properties = Path(__file__).resolve().parent.parent / "properties"
    beauty = {"model": "CLLM4Rec", "dataset": "amazon-beauty-paper", "config_dict": {"data_path": "/nonexistent"}}
    assert Config(**beauty)["lambda_c"] == 300.0  # properties/dataset/amazon-beauty-paper.yaml over CLLM4Rec.yaml
    assert Config(model="CLLM4Rec", dataset="ml-100k")["lambda_c"] == 1000.0  # properties/CLLM4Rec.yaml
    paper = Config(**beauty, config_file_list=[str(properties / "presets" / "CLLM4Rec-paper.yaml")])
    assert paper["lambda_c"] == 1.0  # the paper preset (a config file) over the dataset preset
