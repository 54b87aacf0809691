"""The callback signer: every button's data fits Telegram's 64 bytes, and only data we signed,
unchanged, with our key, is accepted."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.callbacks import MAX_DATA, ConfirmButton, IncidentButton, ProposalButton, Signer

signer = Signer(secrets.token_bytes(32))

EXAMPLES = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def roundtrip(packed: str, kind: type[IncidentButton | ProposalButton | ConfirmButton]) -> bool:
    """What the bot does with a press: parse the data, then check its signature."""
    return signer.verify(kind.unpack(packed))


@EXAMPLES
@given(
    action=st.sampled_from("aursld"),
    incident=st.integers(min_value=1, max_value=2**31 - 1),
    arg=st.sampled_from(["", "1h", "4h", "24h"]),
)
def test_every_incident_button_fits_64_bytes_and_verifies(
    action: str, incident: int, arg: str
) -> None:
    packed = signer.pack(IncidentButton(action=action, incident=incident, arg=arg))
    assert len(packed.encode()) <= MAX_DATA
    assert roundtrip(packed, IncidentButton)


def test_the_longest_confirm_and_proposal_buttons_fit() -> None:
    confirm = signer.pack(ConfirmButton(token=secrets.token_urlsafe(9), yes=True))
    proposal = signer.pack(ProposalButton(kind="f", target="binance-testnet", enabled="1"))
    assert max(len(confirm.encode()), len(proposal.encode())) <= MAX_DATA
    assert roundtrip(confirm, ConfirmButton) and roundtrip(proposal, ProposalButton)


def test_data_that_would_not_fit_is_refused_when_packing() -> None:
    # Fits unsigned (51 bytes), not once the signature is added.
    with pytest.raises(ValueError, match="too long|over 64 bytes"):
        signer.pack(ProposalButton(kind="f", target="x" * 45))


def test_a_press_without_a_signature_or_with_a_made_up_one_is_refused() -> None:
    assert not roundtrip(IncidentButton(action="r", incident=7).pack(), IncidentButton)
    forged = IncidentButton(action="r", incident=7, sig="A" * 16).pack()
    assert not roundtrip(forged, IncidentButton)


def test_changing_any_field_of_signed_data_breaks_the_signature() -> None:
    packed = signer.pack(IncidentButton(action="a", incident=7, arg=""))
    prefix, sig, action, incident, arg = packed.split(":")
    assert roundtrip(packed, IncidentButton)
    for tampered in (
        f"{prefix}:{sig}:r:{incident}:{arg}",  # acknowledge turned into resolve
        f"{prefix}:{sig}:{action}:8:{arg}",  # pointed at another incident
        f"{prefix}:{sig}:{action}:{incident}:24h",  # an argument added
    ):
        assert not roundtrip(tampered, IncidentButton), tampered


def test_a_signature_copied_onto_other_data_is_refused() -> None:
    silence = signer.pack(IncidentButton(action="s", incident=7, arg="1h"))
    sig = IncidentButton.unpack(silence).sig
    lifted = IncidentButton(action="s", incident=7, arg="24h", sig=sig)
    assert not signer.verify(lifted)
    # Nor does a confirm's signature carry over to its cancel (or the reverse).
    token = secrets.token_urlsafe(9)
    cancel_sig = ConfirmButton.unpack(signer.pack(ConfirmButton(token=token, yes=False))).sig
    assert not signer.verify(ConfirmButton(token=token, yes=True, sig=cancel_sig))


def test_data_signed_with_another_key_is_refused() -> None:
    # Another deployment's bot (or a guessed key) cannot mint presses for this one.
    other = Signer(secrets.token_bytes(32))
    packed = other.pack(IncidentButton(action="r", incident=7))
    assert other.verify(IncidentButton.unpack(packed))
    assert not roundtrip(packed, IncidentButton)


def test_buttons_carry_the_signed_data() -> None:
    button = signer.button("Resolve", IncidentButton(action="r", incident=7))
    assert button.text == "Resolve"
    assert button.callback_data is not None and roundtrip(button.callback_data, IncidentButton)
