"""The shipped long-form checkpoint (issue 19): its folder names its task, it loads by name,
decodes a validation problem right, and its shipped policies belong to it."""

import json

import pytest
from unmaskd.cli.main import main
from unmaskd.dllm import EMBEDDED_LONG_MODEL_DIR
from unmaskd.dllm.checkpoint import read_task_file
from unmaskd.tasks.longform import check_answer, make_split

# a one-step validation problem with a distractor, which the model solves greedily
PROBLEM = make_split("validation", 5)[4]
# the policies shipped beside it (issue 30: block32-a10 and full256-a1)
POLICIES = sorted(p.name for p in (EMBEDDED_LONG_MODEL_DIR / "policies").glob("*")
                  if p.is_dir())


def _generate(capsys, *args: str) -> dict:
    assert main(["generate", "--model", "embedded-long", "--prompt", PROBLEM.prompt,
                 "--cache", "dual", "--threads", "1", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_folder_names_its_task_and_canvas():
    assert read_task_file(EMBEDDED_LONG_MODEL_DIR) == {"task": "longform", "gen_length": 256,
                                                       "block_length": 32}


def test_it_loads_by_name_and_solves_a_validation_problem(capsys):
    assert PROBLEM.steps == 1 and "Quinn has 14 stamps." in PROBLEM.question
    out = _generate(capsys, "--sampler", "threshold")
    assert len(out["token_ids"]) == 256 and out["nfe"] < 256  # the folder's canvas
    assert check_answer(out["text"], PROBLEM.value), out["text"]


@pytest.mark.parametrize("policy", POLICIES)
def test_shipped_policies_are_its_own(policy, capsys):
    # the policy's recorded fingerprint must match the loaded weights (else it is refused)
    meta = json.loads((EMBEDDED_LONG_MODEL_DIR / "policies" / policy / "policy.json").read_text())
    block = "full" if meta["block_length"] == meta["gen_length"] else str(meta["block_length"])
    out = _generate(capsys, "--sampler", "learned", "--param", f"policy={policy}",
                    "--block-length", block)
    assert check_answer(out["text"], PROBLEM.value), out["text"]
