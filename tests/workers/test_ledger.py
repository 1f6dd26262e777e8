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
