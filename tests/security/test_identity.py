"""Authentication and SMART scopes over real HTTP: tokens that must be refused, public endpoints, the
development identity provider's code flow with PKCE, and attempts to reach hidden data."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from datetime import date, timedelta
from typing import Any

import httpx
import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select

from nara.fhir.identifiers import make_personal_identity
from nara.security.devidp import DEV_ISSUER, mint, signing_key
from nara.security.schema import pdl_rule
from nara.store.store import Store
from tests.conftest import LiveServer, token
from tests.security.region import (
    HSV,
    JSON,
    PNR,
    VC,
    Region,
    actor,
    build_region,
    consent,
    episode_of_care,
    ids,
    luhn_pnr,
    observation,
)

PNR_OID = "urn:oid:1.2.752.129.2.1.3.1"  # RIV-TA's personnummer OID (R-ID-2)
SNR_OID = "1.2.752.129.2.1.3.3"  # RIV-TA's samordningsnummer OID, as some feeds write it (without urn:oid:)
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


def call(live: LiveServer, bearer: str | None, path: str = "Patient") -> httpx.Response:
    headers = {"Accept": "application/fhir+json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return httpx.get(f"{live.url}/{path}", headers=headers, timeout=10)


def test_unauthenticated_request_is_401_with_www_authenticate(live_server: LiveServer, fhir: httpx.Client) -> None:
    r = call(live_server, None)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.json()["resourceType"] == "OperationOutcome"


def test_metadata_and_smart_configuration_are_public(live_server: LiveServer) -> None:
    assert call(live_server, None, "metadata").status_code == 200
    smart = httpx.get(f"{live_server.url}/.well-known/smart-configuration", timeout=10)
    assert smart.status_code == 200
    conf = smart.json()
    assert conf["authorization_endpoint"].endswith("/auth/authorize")
    assert "S256" in conf["code_challenge_methods_supported"]
    assert "permission-v2" in conf["capabilities"]


def _tamper(tok: str) -> str:
    head, body, sig = tok.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "someone-else"
    new_body = base64.urlsafe_b64encode(orjson.dumps(claims)).decode().rstrip("=")
    return f"{head}.{new_body}.{sig}"


def _alg_none(tok: str) -> str:
    _head, body, _sig = tok.split(".")
    head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    return f"{head}.{body}."


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _tamper(token("c1", "system")), id="tampered-claims"),
        pytest.param(lambda: _alg_none(token("c1", "system")), id="alg-none"),
        pytest.param(lambda: mint(signing_key(), "c1", "system", ttl=-3600), id="expired"),
        pytest.param(lambda: mint(signing_key(), "c1", "system", audience="another-server"), id="wrong-audience"),
        pytest.param(
            lambda: jwt.encode(
                {"alg": "RS256"},
                {"iss": DEV_ISSUER, "aud": "nara", "sub": "x", "exp": int(time.time()) + 60, "nara_kind": "system"},
                RSAKey.generate_key(2048),
            ),
            id="foreign-key",
        ),
        pytest.param(
            lambda: jwt.encode(
                {"alg": "RS256"},
                {"iss": "https://evil.example", "aud": "nara", "sub": "x", "exp": int(time.time()) + 60},
                signing_key(),
            ),
            id="unknown-issuer",
        ),
        pytest.param(lambda: "not-a-jwt", id="garbage"),
    ],
)
def test_bad_tokens_are_refused(live_server: LiveServer, fhir: httpx.Client, make: object) -> None:
    r = call(live_server, make())  # type: ignore[operator]
    assert r.status_code == 401, r.text
    assert "invalid_token" in r.headers["WWW-Authenticate"]
    assert "Traceback" not in r.text


def test_citizen_token_with_invalid_personnummer_is_refused(live_server: LiveServer, fhir: httpx.Client) -> None:
    r = call(live_server, token("191212121213", "citizen"))  # wrong check digit (R-ID-1)
    assert r.status_code == 401


@pytest.fixture
def region(fhir: httpx.Client) -> Region:
    reg = build_region(fhir)
    reg.post(observation(reg.patients["anna"], "29463-7", 80.0), reg.staff["vc"].token())
    reg.post(
        {
            "resourceType": "Condition",
            "subject": {"reference": f"Patient/{reg.patients['anna']}"},
            "code": {"text": "Hypertoni"},
        },
        reg.staff["vc"].token(),
    )
    return reg


def test_scope_limits_types_and_writes(region: Region) -> None:
    anna = region.patients["anna"]
    narrow = token(region.pnr["anna"], "citizen", scope="patient/Observation.rs")
    with region.as_(narrow) as c:
        assert c.get(f"Observation?patient={anna}").json()["total"] == 1
        assert c.get(f"Condition?patient={anna}").json()["total"] == 0
        assert c.get(f"Patient/{anna}").status_code == 403
        created = c.post("Observation", content=orjson.dumps(observation(anna, "29463-7", 81)), headers=JSON)
        assert created.status_code == 403 and "scope" in created.text
    broad = token(region.pnr["anna"], "citizen", scope="patient/*.cruds")
    with region.as_(broad) as c:
        assert c.get(f"Condition?patient={anna}").json()["total"] == 1


def test_smart_v2_scope_r_reads_by_id_and_s_searches(region: Region) -> None:
    """SMART v2 splits reading: ``.r`` reads a resource by id (read, vread, its history), ``.s`` searches. Neither
    letter lends the other its interaction."""
    anna = region.patients["anna"]
    with region.as_(token(region.pnr["anna"], "citizen", scope="patient/Observation.rs")) as c:
        obs = c.get(f"Observation?patient={anna}").json()["entry"][0]["resource"]["id"]
    by_id = [f"Observation/{obs}", f"Observation/{obs}/_history/1", f"Observation/{obs}/_history"]
    searches = [f"Observation?patient={anna}", f"Patient/{anna}/Observation", "Observation/_history"]
    with region.as_(token(region.pnr["anna"], "citizen", scope="patient/Observation.r")) as c:
        assert [c.get(path).status_code for path in by_id] == [200, 200, 200]
        for path in searches:
            refused = c.get(path)
            assert refused.status_code == 403 and "do not allow search on Observation" in refused.text, path
        form = c.post(
            "Observation/_search",
            content=f"patient={anna}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 403
        assert c.get(f"?_type=Observation&patient={anna}").status_code == 403
    with region.as_(token(region.pnr["anna"], "citizen", scope="patient/Observation.s")) as c:
        for path in by_id:
            refused = c.get(path)
            assert refused.status_code == 403 and "scope" in refused.text, path
        assert c.get(f"Observation?patient={anna}").json()["total"] == 1
        assert c.get(f"Patient/{anna}/Observation").json()["total"] == 1
    # SMART v1 ``read`` is both.
    with region.as_(token(region.pnr["anna"], "citizen", scope="patient/Observation.read")) as c:
        assert c.get(f"Observation/{obs}").status_code == 200
        assert c.get(f"Observation?patient={anna}").json()["total"] == 1


def test_a_staff_token_with_only_patient_scopes_reaches_only_its_launch_patient(region: Region) -> None:
    """A SMART app launched from the record for one patient carries patient/ scopes and the launch context
    (claim ``patient``): it reaches that patient's data, within the policy, and no other patient's, even where
    the staff member has a care relationship; without a launch patient, patient/ scopes reach no patient."""
    anna, hidden = region.patients["anna"], region.patients["hidden"]  # both in care at the health centre
    vc = region.staff["vc"]
    hidden_obs = region.post(observation(hidden, "29463-7", 60.0), vc.token())["id"]
    with region.as_(vc.token()) as c:
        anna_obs = c.get(f"Observation?patient={anna}").json()["entry"][0]["resource"]["id"]
        assert c.get(f"Observation/{hidden_obs}").status_code == 200  # user/ scopes: every patient in care

    launched = vc.token(scope="openid fhirUser launch patient/*.rs", patient=anna)
    with region.as_(launched) as c:
        assert c.get(f"Observation/{anna_obs}").status_code == 200
        assert c.get(f"Observation?patient={anna}").json()["total"] == 1
        assert c.get(f"Observation/{hidden_obs}").status_code == 403
        assert c.get(f"Observation?patient={hidden}").json()["total"] == 0
        assert hidden_obs not in c.get("Observation?_count=100").text
        assert c.get(f"Organization/{VC}").status_code == 200  # the directory is no patient's data
    writer = vc.token(scope="patient/*.cruds", patient=anna)
    with region.as_(writer) as c:
        ok = c.post("Observation", content=orjson.dumps(observation(anna, "29463-7", 71.0)), headers=JSON)
        assert ok.status_code == 201, ok.text
        other = c.post("Observation", content=orjson.dumps(observation(hidden, "29463-7", 61.0)), headers=JSON)
        assert other.status_code == 403 and "launched" in other.text
    with region.as_(vc.token(scope="patient/*.rs")) as c:  # no launch context
        assert c.get(f"Observation/{anna_obs}").status_code == 403
        assert c.get(f"Observation?patient={anna}").json()["total"] == 0
    with region.as_(vc.token(scope="patient/*.rs", patient="no-such-patient")) as c:
        refused = c.get(f"Observation/{anna_obs}")
        assert refused.status_code == 403 and "launch patient" in refused.text


def test_a_granular_scope_grants_nothing_rather_than_the_whole_type(region: Region) -> None:
    """SMART v2 scopes narrowed by a query (``?category=...``) are not enforced by Nära: such a scope must not
    grant the whole resource type."""
    anna = region.patients["anna"]
    narrow = token(region.pnr["anna"], "citizen", scope="patient/Observation.rs?category=laboratory")
    with region.as_(narrow) as c:
        r = c.get(f"Observation?patient={anna}")
        assert r.status_code == 200 and r.json()["total"] == 0
    both = token(
        region.pnr["anna"], "citizen", scope="patient/Observation.rs?category=laboratory patient/Observation.rs"
    )
    with region.as_(both) as c:
        assert c.get(f"Observation?patient={anna}").json()["total"] == 1


def test_id_guessing_across_patients_reveals_nothing(region: Region) -> None:
    other = region.post(observation(region.patients["child"], "29463-7", 30.123), region.staff["vc"].token())
    citizen = token(region.pnr["anna"], "citizen")
    with region.as_(citizen) as c:
        for path in (
            f"Observation/{other['id']}",
            f"Observation/{other['id']}/_history",
            f"Observation/{other['id']}/_history/1",
            f"Observation?_id={other['id']}",
            f"Patient/{region.patients['child']}/Observation",
        ):
            r = c.get(path)
            assert "30.123" not in r.text, path
            if r.status_code == 200:
                assert ids(r.json()) == set(), path


def test_include_revinclude_chain_and_has_cannot_reach_hidden_data(region: Region) -> None:
    anna = region.patients["anna"]
    # Data at another provider (the municipality) without consent: invisible to the health centre.
    hidden = region.post(observation(anna, "59408-5", 93.0, "syremättnad-hemsjukvård"), region.staff["hsv"].token())
    vc = region.staff["vc"].token()
    with region.as_(vc) as c:
        assert hidden["id"] not in ids(c.get(f"Observation?patient={anna}").json())
        rev = c.get(f"Patient?_id={anna}&_revinclude=Observation:subject").json()
        assert hidden["id"] not in ids(rev, "include")
        assert ids(c.get("Observation?subject:Patient.name=anna&code=59408-5").json()) == set()
        assert ids(c.get("Patient?_has:Observation:subject:code=59408-5").json()) == set()
        everything = c.get(f"Patient/{anna}/$everything")
        if everything.status_code == 200:
            assert hidden["id"] not in everything.text
        hist = c.get(f"Observation/{hidden['id']}/_history")
        assert hist.status_code in (200, 403) and "syremättnad" not in hist.text
    # With a consent for the health centre the same searches find it.
    region.post(consent(anna, "svod-consent", {"type": "permit", "actor": [actor("IRCP", f"Organization/{VC}")]}))
    with region.as_(vc) as c:
        assert hidden["id"] in ids(c.get(f"Patient?_id={anna}&_revinclude=Observation:subject").json(), "include")
        assert ids(c.get("Patient?_has:Observation:subject:code=59408-5").json()) == {anna}
    assert HSV  # the municipality's unit owns the hidden observation


def test_a_hidden_list_tells_nothing_about_its_members(region: Region) -> None:
    """``_list`` reads the List under the policy too: a List the user may not read selects nothing."""
    anna = region.patients["anna"]
    watch = {
        "resourceType": "List",
        "status": "current",
        "mode": "working",
        "subject": {"reference": f"Patient/{anna}"},
        "entry": [{"item": {"reference": f"Organization/{VC}"}}],
    }
    lst = region.post(watch, region.staff["vc"].token())
    with region.as_(region.staff["tom"].token()) as c:  # no care relationship with Anna: the List is hidden
        assert c.get(f"List/{lst['id']}").status_code == 403
        assert ids(c.get(f"Organization?_list={lst['id']}").json()) == set()
    with region.as_(region.staff["vc"].token()) as c:
        assert ids(c.get(f"Organization?_list={lst['id']}").json()) == {VC}


def test_totals_count_only_what_the_actor_may_see(region: Region) -> None:
    anna = region.patients["anna"]
    region.post(observation(anna, "59408-5", 93.0), region.staff["hsv"].token())
    with region.as_(region.staff["vc"].token()) as c:
        bundle = c.get(f"Observation?patient={anna}&_total=accurate&_count=1").json()
    assert bundle["total"] == 1
    assert not any(link["relation"] == "next" for link in bundle["link"])


def test_dev_idp_authorization_code_flow_with_pkce(live_server: LiveServer, region: Region) -> None:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    root = live_server.root
    redirect = "http://127.0.0.1:9/callback"
    params = {
        "response_type": "code",
        "client_id": "smart-app",
        "redirect_uri": redirect,
        "scope": "openid user/*.rs",
        "state": "s1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    with httpx.Client(base_url=root, timeout=10) as web:
        page = web.get("/auth/authorize", params=params)
        assert page.status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        user = orjson.dumps(
            {"kind": "staff", "sub": region.staff["vc"].hsa, "assignment": region.staff["vc"].assignment, "name": "Vc"}
        ).decode()
        answer = web.post("/auth/authorize", data={**params, "csrf": csrf.group(1), "user": user})
        assert answer.status_code == 303
        code = re.search(r"code=([^&]+)", answer.headers["location"])
        assert code is not None and "state=s1" in answer.headers["location"]
        bad = web.post(
            "/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": code.group(1),
                "client_id": "smart-app",
                "redirect_uri": redirect,
                "code_verifier": "wrong",
            },
        )
        assert bad.status_code == 400  # and the code is now spent
        # A fresh login, then the right verifier.
        page = web.get("/auth/authorize", params=params)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        answer = web.post("/auth/authorize", data={**params, "csrf": csrf.group(1), "user": user})
        code = re.search(r"code=([^&]+)", answer.headers["location"])
        assert code is not None
        tok = web.post(
            "/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": code.group(1),
                "client_id": "smart-app",
                "redirect_uri": redirect,
                "code_verifier": verifier,
            },
        )
        assert tok.status_code == 200, tok.text
        access = tok.json()["access_token"]
    r = call(live_server, access, f"Observation?patient={region.patients['anna']}")
    assert r.status_code == 200 and r.json()["total"] == 1


def test_dev_idp_refuses_open_redirects(live_server: LiveServer, fhir: httpx.Client) -> None:
    params = {
        "response_type": "code",
        "client_id": "x",
        "redirect_uri": "https://evil.example/cb",
        "code_challenge": "abc",
        "code_challenge_method": "S256",
    }
    assert httpx.get(f"{live_server.root}/auth/authorize", params=params, timeout=10).status_code == 400


# ---- R-ID-1 / R-ID-2: the token's personal identity number --------------------------------------------
# Each test uses numbers of its own: the server keeps a resolved identity for half a minute.


def dashed(number: str) -> str:
    """A 12-digit number as people write it (YYYYMMDD-NNNC)."""
    return f"{number[:8]}-{number[8:]}"


def registered(region: Region, system: str, number: str, family: str) -> tuple[str, str]:
    """A Patient the register's feed sends with ``system`` (stored under the URI, in 12 digits: R-ID-1, R-ID-2),
    and one Observation of hers: (patient, observation)."""
    pid = region.post(
        {"resourceType": "Patient", "identifier": [{"system": system, "value": number}], "name": [{"family": family}]}
    )["id"]
    return pid, region.post(observation(pid, "29463-7", 64.5))["id"]


def own_data(bearer: str, region: Region) -> tuple[set[str], set[str]]:
    """The Patients and Observations a token finds when it searches without naming anyone."""
    with region.as_(bearer) as c:
        patients, observations = c.get("Patient?_count=100"), c.get("Observation?_count=100")
        assert patients.status_code == 200 and observations.status_code == 200, (patients.text, observations.text)
        return ids(patients.json()), ids(observations.json())


def test_r_id_2_a_citizen_finds_her_record_sent_under_the_riv_oid(region: Region) -> None:
    """An inbound feed (RIV/HL7v3) sends the personnummer or samordningsnummer under its OID: the citizen's login
    finds her record all the same, whatever form her own number takes in the token, and sees her data only."""
    pnr = luhn_pnr(date(1947, 11, 23), 482)
    snr = make_personal_identity(date(1981, 2, 14), 593, samordning=True)
    her, her_obs = registered(region, PNR_OID, pnr, "Oidsson")
    newcomer, newcomer_obs = registered(region, SNR_OID, snr, "Samordning")
    anna_obs = ids(region.fhir.get(f"Observation?patient={region.patients['anna']}").json())
    for sub in (pnr, dashed(pnr)):
        assert own_data(token(sub, "citizen"), region) == ({her}, {her_obs})
    with region.as_(token(pnr, "citizen")) as c:
        assert c.get(f"Patient/{her}").status_code == 200
        assert c.get(f"Observation/{her_obs}").json()["valueQuantity"]["value"] == 64.5
        assert [c.get(f"Observation/{o}").status_code for o in (newcomer_obs, *anna_obs)] == [403] * (1 + len(anna_obs))
    assert own_data(token(snr, "citizen"), region) == ({newcomer}, {newcomer_obs})


def test_r_id_1_a_number_written_with_a_hyphen_or_in_ten_digits_is_stored_in_twelve_and_a_wrong_one_refused(
    region: Region,
) -> None:
    """A register or feed may write the personnummer as ``YYYYMMDD-NNNC``, or in ten digits (``YYMMDD-NNNC``, ``+``
    once the person is 100): it is stored as 12 digits under the URI, its century read on the day it is written,
    so her login and a search by the number (written either way) find her record, and nobody born a hundred years
    later with the same ten digits does. A number that fails the Luhn check is refused and nothing is stored."""
    pnr = luhn_pnr(date(1948, 6, 9), 371)
    her, her_obs = registered(region, PNR, dashed(pnr), "Bindestreck")
    assert region.fhir.get(f"Patient/{her}").json()["identifier"] == [{"system": PNR, "value": pnr}]
    for sub in (pnr, dashed(pnr)):
        assert own_data(token(sub, "citizen"), region) == ({her}, {her_obs})
    for written in (pnr, dashed(pnr)):
        assert ids(region.fhir.get("Patient", params={"identifier": f"{PNR}|{written}"}).json()) == {her}
    old = make_personal_identity(date(1926, 12, 31), 234)  # 99 years old in December 2026: YYMMDD-NNNC
    elder, elder_obs = registered(region, PNR_OID, f"{old[2:8]}-{old[8:]}", "Tiosiffrig")
    assert region.fhir.get(f"Patient/{elder}").json()["identifier"] == [{"system": PNR, "value": old}]
    assert ids(region.fhir.get("Patient", params={"identifier": f"{PNR_OID}|{old}"}).json()) == {elder}
    assert own_data(token(old, "citizen"), region) == ({elder}, {elder_obs})
    assert own_data(token("20" + old[2:], "citizen"), region) == (set(), set())  # the same digits a century later
    wrong = pnr[:-1] + str((int(pnr[-1]) + 1) % 10)  # the Luhn check fails
    before = region.fhir.get("Patient", params={"_summary": "count"}).json()["total"]
    refused = region.fhir.post(
        "Patient",
        content=orjson.dumps({"resourceType": "Patient", "identifier": [{"system": PNR, "value": dashed(wrong)}]}),
        headers=JSON,
    )
    assert refused.status_code == 400 and refused.json()["issue"][0]["expression"] == ["Patient.identifier[0].value"]
    assert "Luhn" in refused.json()["issue"][0]["diagnostics"]
    assert region.fhir.get("Patient", params={"_summary": "count"}).json()["total"] == before


def test_r_id_1_a_staff_edit_keeps_the_register_number_as_stored_and_gives_the_record_to_no_one_else(
    region: Region, store: Store
) -> None:
    """A staff member edits a Patient stored before writes were normalised; the register's number is put back as
    stored (only its feed changes it). It is not read again on the day of the edit: a woman written
    ``YYMMDD-NNNC`` at 99 who has turned 100 since keeps her number, and the baby born a century after her with the
    same ten digits does not log in to her record. Nor is the edit refused for a stored number that fails the
    Luhn check, which the staff member neither sent nor may change."""
    today = date.today()
    born = (today - timedelta(days=30)).replace(year=today.year - 100)  # turned 100 a month ago
    number = make_personal_identity(born, 482)
    ten, right = f"{number[2:8]}-{number[8:]}", luhn_pnr(date(1951, 5, 5), 123)
    wrong = right[:-1] + str((int(right[-1]) + 1) % 10)  # the Luhn check fails
    with store.transaction() as tx:
        tx.validate = False  # as the register's feed stored them before
        for pid, value in (("elder", ten), ("misspelt", wrong)):
            tx.update(
                "Patient",
                pid,
                {
                    "resourceType": "Patient",
                    "id": pid,
                    "identifier": [{"system": PNR, "value": value}],
                    "name": [{"family": "Hundra"}],
                },
            )
    for pid in ("elder", "misspelt"):
        region.put(episode_of_care(f"eoc-{pid}", pid, VC))
    with region.as_(region.staff["vc"].token()) as c:
        for pid in ("elder", "misspelt"):
            body = {
                "resourceType": "Patient",
                "id": pid,
                "name": [{"family": "Hundra"}],
                "telecom": [{"system": "phone", "value": "019-123456"}],
            }
            r = c.put(f"Patient/{pid}", content=orjson.dumps(body), headers=JSON)
            assert r.status_code == 200, r.text
    assert region.fhir.get("Patient/elder").json()["identifier"] == [{"system": PNR, "value": ten}]
    assert region.fhir.get("Patient/misspelt").json()["identifier"] == [{"system": PNR, "value": wrong}]
    assert own_data(token("20" + number[2:], "citizen"), region) == (set(), set())  # the baby's number


def test_r_id_1_a_number_on_two_live_records_identifies_no_one_and_a_deleted_record_none(region: Region) -> None:
    """A number two live Patients carry identifies no one, also when one record was sent with it under the URI and
    the other under the OID (403, the records must be corrected). A deleted record is no record: the number it carried
    opens nothing, and a new record with that number is hers alone."""
    twice = luhn_pnr(date(1949, 12, 24), 617)
    registered(region, PNR, twice, "Först")
    registered(region, PNR_OID, twice, "Sedan")
    with region.as_(token(twice, "citizen")) as c:
        refused = c.get("Patient")
        assert refused.status_code == 403 and "More than one Patient" in refused.text
    gone = luhn_pnr(date(1952, 8, 31), 724)
    old, old_obs = registered(region, PNR_OID, gone, "Raderad")
    assert region.fhir.delete(f"Patient/{old}").status_code in (200, 204)
    assert own_data(token(gone, "citizen"), region) == (set(), set())
    moved = luhn_pnr(date(1953, 10, 1), 835)
    first, _ = registered(region, PNR_OID, moved, "Gammal")
    assert region.fhir.delete(f"Patient/{first}").status_code in (200, 204)
    again, again_obs = registered(region, PNR, moved, "Ny")
    assert own_data(token(moved, "citizen"), region) == ({again}, {again_obs})
    with region.as_(token(moved, "citizen", scope="patient/*.rs")) as c:
        assert c.get(f"Observation/{old_obs}").status_code == 403


def test_r_id_2_a_guardian_acts_for_a_child_whom_the_feed_sent_under_the_oid(region: Region, store: Store) -> None:
    """A proxy token names the represented person by personnummer: a child the register's feed sent under the
    OID is found, and the guardian it recorded (under the OID, written with a hyphen) acts for her whatever form
    the token gives either number in. The access rules keep the guardian's number in its 12 digits (R-ID-1)."""
    today = date.today()
    born = today.replace(year=today.year - 6) - timedelta(days=40)
    child_pnr, guardian_pnr = luhn_pnr(born, 284), luhn_pnr(date(1988, 6, 17), 395)
    child, child_obs = registered(region, PNR_OID, child_pnr, "Barnsson")
    region.put({**region.fhir.get(f"Patient/{child}").json(), "birthDate": born.isoformat()})
    guardian: dict[str, Any] = {
        "resourceType": "RelatedPerson",
        "patient": {"reference": f"Patient/{child}"},
        "relationship": [{"coding": [{"system": ROLE_CODE, "code": "GUARD"}]}],
        "identifier": [{"system": PNR_OID, "value": dashed(guardian_pnr)}],
    }
    region.post(guardian)
    with store.engine.connect() as conn:
        kept = conn.execute(select(pdl_rule.c.person).where(pdl_rule.c.patient_id == child)).scalars().all()
    assert kept == [guardian_pnr]
    for sub, patient in ((guardian_pnr, child_pnr), (dashed(guardian_pnr), dashed(child_pnr))):
        with region.as_(token(sub, "proxy", patient=patient)) as c:
            found = c.get(f"Observation?patient={child}")
            assert found.status_code == 200 and ids(found.json()) == {child_obs}, found.text
    stranger = luhn_pnr(date(1987, 5, 16), 506)
    with region.as_(token(stranger, "proxy", patient=child_pnr)) as c:
        assert c.get(f"Observation?patient={child}").status_code == 403
