"""Bearer-token validation (nara.security.tokens): what a remembered, already verified token still has to
pass on every use, and when its signature is checked again."""

from __future__ import annotations

import time

import pytest
from joserfc.jwk import RSAKey

from nara.fhir.outcome import FhirError
from nara.security import tokens
from nara.security.devidp import DEV_ISSUER, key_set, mint
from nara.security.tokens import Issuer, TokenValidator

AUDIENCE = "nara"


@pytest.fixture
def key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "test-key"})


def validator_for(key: RSAKey) -> TokenValidator:
    return TokenValidator([Issuer(DEV_ISSUER, AUDIENCE, keys=key_set(key))])


def clock_at(monkeypatch: pytest.MonkeyPatch, moment: float) -> None:
    monkeypatch.setattr(tokens.time, "time", lambda: moment)


def test_a_remembered_token_is_refused_once_it_expires(key: RSAKey, monkeypatch: pytest.MonkeyPatch) -> None:
    validator = validator_for(key)
    start = time.time()
    token = mint(key, "SE2321000032-PVC", "staff", ttl=120)
    assert validator.validate(token)["sub"] == "SE2321000032-PVC"
    assert validator.validate(token)["sub"] == "SE2321000032-PVC"  # remembered
    clock_at(monkeypatch, start + 120 + tokens.CLOCK_SKEW_SECONDS + 1)
    with pytest.raises(FhirError, match="expired") as err:
        validator.validate(token)
    assert err.value.status == 401


def test_a_remembered_token_is_verified_again_against_the_issuers_current_keys(
    key: RSAKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The identity provider withdraws the key that signed the token: within VERIFIED_SECONDS the token is
    still accepted, after that its signature is checked again and it is refused."""
    validator = validator_for(key)
    start = time.time()
    token = mint(key, "SE2321000032-PVC", "staff", ttl=3600)
    validator.validate(token)
    validator.issuers[DEV_ISSUER].keys = key_set(RSAKey.generate_key(2048, parameters={"kid": "new-key"}))
    clock_at(monkeypatch, start + tokens.VERIFIED_SECONDS / 2)
    assert validator.validate(token)["sub"] == "SE2321000032-PVC"
    clock_at(monkeypatch, start + tokens.VERIFIED_SECONDS + 1)
    with pytest.raises(FhirError, match="signature") as err:
        validator.validate(token)
    assert err.value.status == 401


def test_a_token_counts_as_recently_verified_only_while_its_verification_lasts_a_moment_longer(
    key: RSAKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the server asks before running a request on its event loop, where fetching keys must not happen."""
    validator = validator_for(key)
    start = time.time()
    token = mint(key, "SE2321000032-PVC", "staff", ttl=3600)
    assert not validator.recently_verified(token)  # never verified
    clock_at(monkeypatch, start)
    validator.validate(token)
    assert validator.recently_verified(token)
    clock_at(monkeypatch, start + tokens.VERIFIED_SECONDS - 2)
    assert validator.recently_verified(token)
    clock_at(monkeypatch, start + tokens.VERIFIED_SECONDS - 0.5)  # verified again within the moment: not now
    assert not validator.recently_verified(token)
    assert not validator.recently_verified("not-a-token")


def test_a_refused_token_is_not_remembered(key: RSAKey) -> None:
    validator = validator_for(key)
    wrong_audience = mint(key, "SE2321000032-PVC", "staff", audience="another-server")
    for _ in range(2):
        with pytest.raises(FhirError, match="audience"):
            validator.validate(wrong_audience)
    head, body, sig = mint(key, "SE2321000032-PVC", "staff").split(".")
    tampered = ".".join([head, body, sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")])
    for _ in range(2):
        with pytest.raises(FhirError, match="signature"):
            validator.validate(tampered)


def test_the_claims_handed_out_cannot_change_the_remembered_token(key: RSAKey) -> None:
    validator = validator_for(key)
    token = mint(key, "SE2321000032-PVC", "staff", assignment="SE2321000032-PVC-U")
    claims = validator.validate(token)
    claims["assignment"] = "someone-elses-assignment"
    assert validator.validate(token)["assignment"] == "SE2321000032-PVC-U"
