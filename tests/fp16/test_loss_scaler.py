"""LossScaler: growth, backoff with hysteresis, clamps, collapse error, static mode, state."""
import pytest

from mixprec.fp16 import LossScaleCollapseError, LossScaler
from mixprec.fp16.loss_scaler import build_loss_scaler


def test_growth_after_exactly_growth_interval_clean_steps():
    scaler = LossScaler(init_scale=8., growth_interval=5)
    for _ in range(4):
        scaler.update(False)
    assert scaler.loss_scale == 8.
    scaler.update(False)
    assert scaler.loss_scale == 16.
    scaler.update(True)  # an overflow restarts the count
    assert scaler.loss_scale == 8.
    for _ in range(4):
        scaler.update(False)
    assert scaler.loss_scale == 8.
    scaler.update(False)
    assert scaler.loss_scale == 16.


def test_backoff_after_hysteresis_consecutive_overflows():
    scaler = LossScaler(init_scale=64., hysteresis=3, growth_interval=100)
    scaler.update(True)
    scaler.update(True)
    assert scaler.loss_scale == 64.
    scaler.update(False)  # a clean step resets the hysteresis
    scaler.update(True)
    scaler.update(True)
    assert scaler.loss_scale == 64.
    scaler.update(True)
    assert scaler.loss_scale == 32.
    assert scaler.skipped_steps == 5


def test_clamps_and_collapse_error():
    scaler = LossScaler(init_scale=2.**24, max_scale=2.**24, growth_interval=1)
    scaler.update(False)
    assert scaler.loss_scale == 2.**24
    scaler = LossScaler(init_scale=3., min_scale=2.)
    scaler.update(True)  # 1.5 would cross the floor: lands on it
    assert scaler.loss_scale == 2.
    with pytest.raises(LossScaleCollapseError) as err:
        scaler.update(True)
    assert isinstance(err.value, RuntimeError)
    message = str(err.value)
    assert 'diverged' in message and 'bfloat16' in message and 'grad_clip' in message
    assert 'learning rate' in message
    assert LossScaler(init_scale=2.**30, max_scale=2.**20).loss_scale == 2.**20


def test_static_mode_keeps_scale_but_counts():
    scaler = LossScaler(init_scale=512., mode='static', growth_interval=1)
    for overflow in (True, False, True, False):
        scaler.update(overflow)
    assert scaler.loss_scale == 512. and scaler.skipped_steps == 2


def test_mmcv_legacy_names():
    scaler = LossScaler(init_scale=16., scale_factor=4., scale_window=2)
    assert (scaler.growth_factor, scaler.backoff_factor, scaler.growth_interval) == (4., .25, 2)
    scaler.update(True)
    assert scaler.loss_scale == 4.
    scaler.update_scale(False)
    scaler.update_scale(False)
    assert scaler.cur_scale == 16.
    other = LossScaler()
    other.load_state_dict({'cur_scale': 256., 'scale_factor': 2., 'scale_window': 500})
    assert (other.loss_scale, other.growth_interval, other.backoff_factor) == (256., 500, .5)


def test_state_round_trip():
    scaler = LossScaler(init_scale=1024., growth_interval=4, hysteresis=2)
    for overflow in (False, True, False, False, True):
        scaler.update(overflow)
    restored = LossScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.state_dict() == scaler.state_dict()
    for overflow in (True, False, False, False, False, True, True):
        scaler.update(overflow)
        restored.update(overflow)
        assert restored.loss_scale == scaler.loss_scale
    assert isinstance(restored.loss_scale, float)


def test_build_from_hook_argument():
    assert build_loss_scaler(512., 'dynamic').mode == 'static'
    assert build_loss_scaler('dynamic', 1.).mode == 'dynamic'
    assert build_loss_scaler(None, 1.).loss_scale == 1.
    built = build_loss_scaler(dict(init_scale=128., growth_interval=7), 'dynamic')
    assert (built.loss_scale, built.growth_interval) == (128., 7)
    with pytest.raises(ValueError):
        build_loss_scaler('O2', 'dynamic')
    with pytest.raises(ValueError):
        LossScaler(mode='fixed')
