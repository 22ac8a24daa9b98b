"""A search space RecBole cannot parse is refused before any trial, naming the file, the line and the form."""
import pytest

from recbole_cllm4rec.hyper import check_hyper_file, run_hyper


@pytest.mark.parametrize(
    "line, expected",
    [
        ("learning_rate loguniform -9.2 -7.6", "expected name loguniform low,high"),  # spaces: RecBole glues them
        ("mask_ratio uniform 0.3,0.1", "expected name uniform low,high"),  # low above high
        ("stopping_step quniform 1,5", "expected name quniform low,high,q"),
        ("lambda_c choice 100", "expected name choice [a,b,...]"),
        ("lambda_c choise [1,2]", "expected one of: name choice"),  # unknown type
        ("lambda_c [1,2]", "expected one of: name choice"),  # two fields: RecBole would skip it silently
    ],
)
def test_a_bad_line_is_named_with_its_file_and_number(tmp_path, line, expected):
    space = tmp_path / "space.hyper"
    space.write_text(f"readout_state_weight choice [0.1,0.3]\n\n{line}\n")
    with pytest.raises(ValueError) as refused:
        check_hyper_file(space)
    message = str(refused.value)
    assert message.startswith(f"{space}:3: {line!r} is not a RecBole search-space line") and expected in message
    assert "\n" not in message


def test_every_form_recbole_reads_is_accepted(tmp_path):
    space = tmp_path / "space.hyper"
    space.write_text("lambda_c choice [1,2]\nreadout choice ['last','mean']\nmask_ratio uniform 0.1,0.5\n"
                     "learning_rate loguniform -9.2,-7.6\nreadout_skip quniform 1,9,2\n")
    check_hyper_file(space)  # no error


def test_run_hyper_refuses_the_file_before_any_trial(tiny_data):
    space = tiny_data / "space.hyper"
    space.write_text("learning_rate loguniform -9.2 -7.6\n")
    with pytest.raises(ValueError, match=r"space.hyper:1: .*expected name loguniform low,high"):
        run_hyper("CLLM4Rec", "tiny", str(space), config_dict={"data_path": str(tiny_data)})
    assert not (tiny_data / "saved").exists() and not (tiny_data / "log").exists()
