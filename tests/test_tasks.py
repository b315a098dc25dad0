"""The synthetic arithmetic task suite."""

from unmaskd.tasks.arithmetic import check_answer, extract_answer, generate, is_held_out, make_split


def test_generator_is_deterministic():
    assert generate(123) == generate(123)
    assert make_split("test", 30) == make_split("test", 30)


def test_answers_are_worked_and_correct():
    for p in make_split("train", 200):
        lines = p.answer.split("\n")
        assert len(lines) == p.steps + 1 and lines[-1] == f"#### {p.value}"
        for line in lines[:-1]:
            lhs, rhs = line.rstrip(".").split(" = ")
            assert eval(lhs.replace("/", "//")) == int(rhs)  # noqa: S307 - our own arithmetic
            assert 1 <= int(rhs) <= 99


def test_splits_are_disjoint_and_test_holds_unseen_combinations():
    train = {p.question for p in make_split("train", 3000)}
    val = {p.question for p in make_split("validation", 500)}
    test = make_split("test", 500)
    assert not train & val and not train & {p.question for p in test}
    assert not val & {p.question for p in test}
    assert not any(p.unseen for p in make_split("train", 500))
    assert any(p.unseen for p in test)
    assert {p.steps for p in test} == {1, 2, 3}


def test_held_out_flag_matches_steps():
    for p in make_split("test", 100):
        triples = []
        for line in p.answer.split("\n")[:-1]:
            a, op, b = line.split(" = ")[0].split()
            triples.append(is_held_out(int(a), op, int(b)))
        assert p.unseen == any(triples)


def test_checker_on_hand_written_cases():
    assert check_answer("3 + 4 = 7.\n#### 7", 7)
    assert check_answer("#### 12", "12")
    assert not check_answer("3 + 4 = 7.\n#### 8", 7)
    assert check_answer("3 + 4 = 7.", 7)  # fallback: the last number
    assert not check_answer("no numbers here", 7)
    assert extract_answer("#### -5") == -5
    assert extract_answer("1 + 1 = 2.\n#### 2\n#### 3") == 2  # the first final line counts
    assert extract_answer("") is None
