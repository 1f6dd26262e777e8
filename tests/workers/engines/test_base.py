import pytest

from workers.engines.base import Prompt, SamplingConfig, StopChecker


def test_stop_checker_holds_back_partial_matches():
    s = StopChecker(["</ans>"])
    assert s.feed("The value is 4") == ("The value is 4", False)
    assert s.feed("</a") == ("", False)  # could be the start of the stop string
    assert s.feed("ns> trailing") == ("", True)
    assert s.text == "The value is 4"


def test_stop_checker_releases_false_alarms_and_flushes():
    s = StopChecker(["###"])
    assert s.feed("a#") == ("a", False)
    assert s.feed("b") == ("#b", False)
    assert s.feed("##") == ("", False)
    assert s.flush() == "##"


def test_stop_checker_without_stops():
    s = StopChecker([])
    assert s.feed("abc") == ("abc", False)


def test_prompt_and_sampling_validation():
    p = Prompt.of(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "q"}])
    assert p.user_text() == "q"
    assert Prompt.of(prompt="raw").user_text() == "raw"
    with pytest.raises(ValueError):
        Prompt()
    with pytest.raises(ValueError):
        Prompt.of(messages=[{"content": "no role"}])
    with pytest.raises(ValueError):
        SamplingConfig(n=0)
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0)
