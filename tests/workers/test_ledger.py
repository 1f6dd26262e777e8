from decimal import Decimal

import pytest

from workers.ledger import Ledger, Prices, cost_of_tokens, cost_usd, worst_count_method


def test_cost_is_exact_decimal():
    prices = Prices(Decimal("0.15"), Decimal("0.60"))
    # 1234 * 0.15 / 1e6 + 567 * 0.60 / 1e6 = 0.0001851 + 0.0003402
    assert cost_of_tokens(1234, 567, prices) == Decimal("0.0005253")
    ledger = Ledger(prompt_tokens=1234, completion_tokens=567)
    assert cost_usd(ledger, prices) == Decimal("0.0005253")
    assert cost_usd((1234, 567), prices) == Decimal("0.0005253")
    assert cost_usd({"prompt_tokens": 1234, "completion_tokens": 567}, prices) == Decimal(
        "0.0005253"
    )


def test_prices_from_floats_use_their_decimal_text():
    prices = Prices(0.1, 0.2)  # type: ignore[arg-type]
    assert prices.input_usd_per_mtok == Decimal("0.1")
    assert cost_of_tokens(3_000_000, 0, prices) == Decimal("0.3")


def test_gpu_hour_pricing_when_token_prices_are_zero():
    prices = Prices(Decimal(0), Decimal(0), gpu_usd_per_hour=Decimal("3.60"))
    ledger = Ledger(prompt_tokens=10, completion_tokens=10, wall_s=2.0, engine_wall_s=1.5)
    assert cost_usd(ledger, prices) == Decimal("0.0015")
    # Token prices win when set.
    assert cost_usd(ledger, Prices(Decimal(1), Decimal(1), Decimal(100))) == Decimal("0.00002")


def test_bad_inputs():
    with pytest.raises(ValueError):
        Prices(Decimal(-1), Decimal(0))
    with pytest.raises(ValueError):
        cost_of_tokens(-1, 0, Prices(Decimal(1), Decimal(1)))
    with pytest.raises(TypeError):
        cost_usd("12", Prices(Decimal(1), Decimal(1)))  # type: ignore[arg-type]


def test_worst_count_method():
    assert worst_count_method() == "exact"
    assert worst_count_method("exact", "usage") == "usage"
    assert worst_count_method("chunks", "estimate", "usage") == "estimate"
    assert Ledger(prompt_tokens=3, completion_tokens=4).total_tokens == 7


def test_cached_and_reasoning_tokens_at_their_own_prices():
    prices = Prices(
        Decimal("2.50"),
        Decimal("10"),
        cached_input_usd_per_mtok=Decimal("1.25"),
        reasoning_usd_per_mtok=Decimal("12"),
    )
    # 1000 prompt of which 600 cached; 500 completion of which 200 reasoning.
    expected = (
        Decimal(400) * Decimal("2.50")
        + Decimal(600) * Decimal("1.25")
        + Decimal(300) * Decimal("10")
        + Decimal(200) * Decimal("12")
    ) / Decimal(1_000_000)
    assert (
        cost_of_tokens(1000, 500, prices, cached_prompt_tokens=600, reasoning_tokens=200)
        == expected
    )
    ledger = Ledger(
        prompt_tokens=1000, completion_tokens=500, cached_prompt_tokens=600, reasoning_tokens=200
    )
    assert cost_usd(ledger, prices) == expected
    assert cost_usd(ledger.to_dict(), prices) == expected
    # Without their own prices, the parts cost what their whole costs.
    plain = Prices(Decimal("2.50"), Decimal("10"))
    assert cost_usd(ledger, plain) == cost_of_tokens(1000, 500, plain)
    with pytest.raises(ValueError, match="exceed"):
        cost_of_tokens(10, 10, prices, cached_prompt_tokens=11)


def test_upper_bound_prices_each_kind_at_its_dearest():
    prices = Prices(
        Decimal("2"),
        Decimal("8"),
        cached_input_usd_per_mtok=Decimal("0.5"),
        reasoning_usd_per_mtok=Decimal("9"),
    )
    bound = prices.upper_bound()
    assert (bound.input_usd_per_mtok, bound.output_usd_per_mtok) == (Decimal("2"), Decimal("9"))
    for cached in (0, 50, 100):
        for reasoning in (0, 30, 60):
            assert cost_of_tokens(
                100, 60, prices, cached_prompt_tokens=cached, reasoning_tokens=reasoning
            ) <= cost_of_tokens(100, 60, bound)
    assert prices.to_dict()["reasoning_usd_per_mtok"] == "9"
