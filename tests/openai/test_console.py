"""The console (`/console`) on `tenantai dev` in a real browser: headless
Chromium from Debian, driven by Selenium through Debian's chromedriver.

An operator signs in with the admin token using only the keyboard and sees a
tenant that made real embeddings calls and ran a batch: its spend against its
budget, its usage by day and model (table and SVG charts), the alerts sent,
its keys with their last use (and revokes one), its batches with progress;
every figure on the page equals the API's. A tenant signs in with its own
reporting key (scope `usage`) and sees its own figures and nothing of another
tenant, in the page or on the wire. No page logs an error, no URL ever holds a
token, and each view is saved as a screenshot under target/test-artifacts/.
"""

import io
import json
import os
import pathlib
import shutil
import subprocess
import time
import uuid

import httpx
import openai
import pytest

BASE_URL = os.environ["TENANTAI_BASE_URL"]
CREDENTIALS = json.loads(pathlib.Path(os.environ["TENANTAI_CREDENTIALS"]).read_text())
ROOT = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "target" / "test-artifacts"
EMBED = "all-MiniLM-L6-v2"
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium")) if p and os.path.exists(p)), None)
CHROMEDRIVER = shutil.which("chromedriver")

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("chromium and chromium-driver are missing (scripts/lib/tools.sh browser_install)")
    pytest.skip("needs chromium and chromium-driver (scripts/test.sh installs them)", allow_module_level=True)

# Only the browser and driver named here: Selenium must not look for others.
os.environ.setdefault("SE_OFFLINE", "true")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def admin(method, path, body=None):
    r = httpx.request(method, f"{BASE_URL}/admin/v1{path}", json=body,
                      headers={"authorization": f"Bearer {CREDENTIALS['admin_token']}"})
    assert r.is_success, r.text
    return r.json()


def tenant_get(key, path):
    r = httpx.get(f"{BASE_URL}{path}", headers={"authorization": f"Bearer {key}"})
    assert r.is_success, r.text
    return r.json()


def wait_for(predicate, what, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def world():
    """Two tenants: one with real embeddings calls, a finished batch, a key to
    revoke, a budget it crossed (so alerts were sent); the other with a call of
    its own."""
    tag = uuid.uuid4().hex[:6]
    acme = admin("POST", "/tenants", {"name": f"Console Acme {tag}", "tier": "pro"})
    globex = admin("POST", "/tenants", {"name": f"Console Globex {tag}", "tier": "pro"})
    key = admin("POST", f"/tenants/{acme['id']}/keys", {"name": "app"})["secret"]
    reporting = admin("POST", f"/tenants/{acme['id']}/keys", {"name": "console", "scopes": ["usage"]})["secret"]
    doomed = admin("POST", f"/tenants/{acme['id']}/keys", {"name": "to revoke"})
    other_key = admin("POST", f"/tenants/{globex['id']}/keys", {"name": "theirs"})["secret"]
    c = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=key, max_retries=0)
    for text in (["hello world"], ["a console", "of numbers"], ["hello world"]):
        c.embeddings.create(model=EMBED, input=text)
    openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=other_key, max_retries=0).embeddings.create(
        model=EMBED, input=["only Globex"])
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": EMBED, "input": f"batch line {i}"}} for i in range(2)]
    f = c.files.create(file=("in.jsonl", io.BytesIO(("\n".join(map(json.dumps, lines)) + "\n").encode())),
                       purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    wait_for(lambda: c.batches.retrieve(batch.id).status == "completed", "the batch to complete", 240)
    # A batch in flight: its model's backend is down, so its chunk is handed back
    # to run later (and stays in progress for minutes, well past this test).
    offline = f"offline-{tag}"
    admin("POST", "/models", {"model": offline, "version": "1", "kind": "embedding", "backend": "worker",
                              "endpoint": "http://127.0.0.1:9", "price_per_1k_tokens_micros": 20,
                              "status": "live", "owner_tenant": acme["id"]})
    stuck_lines = [{"custom_id": f"s{i}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": offline, "input": f"waiting {i}"}} for i in range(3)]
    f = c.files.create(file=("stuck.jsonl", io.BytesIO(("\n".join(map(json.dumps, stuck_lines)) + "\n").encode())),
                       purpose="batch")
    stuck = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    wait_for(lambda: c.batches.retrieve(stuck.id).status == "in_progress", "the batch to be split")
    # Every call metered: 3 direct requests and 2 batch lines.
    wait_for(lambda: tenant_get(key, "/v1/usage")["totals"]["requests"] == 5, "usage to be metered")
    wait_for(lambda: tenant_get(other_key, "/v1/usage")["totals"]["requests"] == 1, "their usage")
    admin("PATCH", f"/tenants/{acme['id']}", {"monthly_budget_micros": 1})
    wait_for(lambda: len(admin("GET", f"/tenants/{acme['id']}/alerts")["data"]) == 3, "the alerts to be sent")
    return {"acme": acme, "globex": globex, "key": key, "reporting": reporting, "doomed": doomed,
            "other_key": other_key, "batch": batch.id, "stuck": stuck.id, "secrets": [CREDENTIALS["admin_token"], key, reporting]}


@pytest.fixture
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,3600", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # The driver's own log would hold what was typed (the tokens): it goes nowhere.
    service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


class Wire:
    """What the page fetched: every request URL and response body (CDP)."""

    def __init__(self, driver):
        self.driver = driver
        self.urls = []
        self.bodies = []

    def collect(self):
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg["method"] == "Network.requestWillBeSent":
                self.urls.append(msg["params"]["request"]["url"])
            elif msg["method"] == "Network.loadingFinished":
                try:
                    got = self.driver.execute_cdp_cmd("Network.getResponseBody",
                                                      {"requestId": msg["params"]["requestId"]})
                    self.bodies.append(got["body"])
                except Exception:  # noqa: BLE001 - a body the browser no longer holds (a redirect, the favicon)
                    pass
        return self


def no_errors(driver, allowed=()):
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    severe = [e for e in severe if not any(a in e["message"] for a in allowed)]
    assert severe == [], severe


def no_secret_in_urls(driver, wire, secrets):
    for secret in secrets:
        assert secret not in driver.current_url
        for url in wire.urls:
            assert secret not in url, url


def wait(driver, condition, what, timeout=30):
    # A table re-rendered between finding a row and reading it: look again.
    return WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: condition(d), message=f"waiting for {what}")


def data(element, name):
    return element.get_attribute(f"data-{name}")


def shot(driver, name):
    path = ARTIFACTS / f"console-{name}.png"
    assert driver.save_screenshot(str(path)), path
    assert path.stat().st_size > 10_000, path


def focus_is_visible(driver):
    style = driver.execute_script("const s = getComputedStyle(document.activeElement); return [s.outlineStyle, s.outlineWidth];")
    assert style[0] != "none" and style[1] != "0px", style


def type_token(driver, token):
    """With the keyboard only: the token field has the focus on load."""
    active = driver.switch_to.active_element
    assert active.get_attribute("id") == "token"
    focus_is_visible(driver)
    active.send_keys(token + Keys.ENTER)


def loaded(driver):
    """The detail view finished loading: three charts and the status line."""
    charts = driver.find_elements(By.CSS_SELECTOR, "#charts svg.usage-chart")
    status = driver.find_element(By.ID, "status").text
    return len(charts) == 3 and status.startswith("Up to date")


def assert_usage_matches(driver, report):
    """The page's totals, table rows, charts and gauge against a usage report."""
    totals = report["totals"]
    dl = driver.find_element(By.ID, "usage-totals")
    for field in ("requests", "tokens", "prompt_tokens", "completion_tokens", "cost_micros",
                  "inputs", "cache_hits", "batch_requests", "batch_tokens", "batch_cost_micros"):
        assert data(dl, field.replace("_", "-")) == str(totals[field]), field
    assert data(dl, "from") == report["from"] and data(dl, "to") == report["to"]
    page_rows = sorted(
        (data(r, "day"), data(r, "model"), int(data(r, "requests")), int(data(r, "tokens")),
         int(data(r, "cost-micros")), int(data(r, "batch-requests")))
        for r in driver.find_elements(By.CSS_SELECTOR, "#usage-table tbody tr[data-day]"))
    api_rows = sorted((b["day"], b["model"], b["requests"], b["tokens"], b["cost_micros"], b["batch_requests"])
                      for b in report["data"])
    assert page_rows == api_rows and api_rows
    for metric, field in (("requests", "requests"), ("tokens", "tokens"), ("cost", "cost_micros")):
        svg = driver.find_element(By.CSS_SELECTOR, f"#charts svg[data-metric='{metric}']")
        assert data(svg, "total") == str(totals[field]), metric
        bars = svg.find_elements(By.CSS_SELECTOR, "rect.bar")
        assert sum(int(data(b, "value")) for b in bars) == totals[field]
        legend = {(data(g, "model"), data(g, "class")): int(data(g, "total"))
                  for g in svg.find_elements(By.CSS_SELECTOR, "g.legend-entry")}
        batch_field = {"requests": "batch_requests", "cost": "batch_cost_micros"}.get(metric)
        if batch_field:
            assert legend[(EMBED, "batch")] == totals[batch_field]
            assert legend[(EMBED, "embeddings")] == totals[field] - totals[batch_field]
    gauge = driver.find_element(By.CSS_SELECTOR, "#budget .gauge")
    budget = report["budget"]
    assert data(gauge, "month-to-date-cost-micros") == str(budget["month_to_date_cost_micros"])
    assert data(gauge, "monthly-budget-micros") == str(budget["monthly_budget_micros"])
    assert data(gauge, "month") == budget["month"]
    meter = gauge.find_element(By.TAG_NAME, "meter")
    assert float(meter.get_attribute("max")) == budget["monthly_budget_micros"]


def test_an_operator_signs_in_with_the_keyboard_and_sees_the_apis_numbers(world, browser):
    d, acme = browser, world["acme"]
    wire = Wire(d)
    d.get(f"{BASE_URL}/console")
    type_token(d, CREDENTIALS["admin_token"])
    row = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, f"#tenants tr[data-tenant-id='{acme['id']}']"),
               "the tenant list")[0]
    assert d.find_element(By.ID, "sign-in").get_attribute("hidden") is not None
    assert d.switch_to.active_element.get_attribute("id") == "tenants-title"
    listed = {data(r, "tenant-id") for r in d.find_elements(By.CSS_SELECTOR, "#tenants tr[data-tenant-id]")}
    assert {acme["id"], world["globex"]["id"]} <= listed
    assert acme["name"] in row.text and "pro" in row.text
    budget = admin("GET", f"/tenants/{acme['id']}/usage")["budget"]
    gauge = row.find_element(By.CSS_SELECTOR, ".gauge")
    assert data(gauge, "month-to-date-cost-micros") == str(budget["month_to_date_cost_micros"])
    assert data(gauge, "monthly-budget-micros") == "1"
    shot(d, "operator-tenants")

    # Open the tenant with the keyboard.
    button = row.find_element(By.TAG_NAME, "button")
    button.send_keys(Keys.ENTER)
    wait(d, loaded, "the tenant's usage")
    assert d.find_element(By.ID, "detail-title").text == acme["name"]
    assert_usage_matches(d, admin("GET", f"/tenants/{acme['id']}/usage?group_by=day,model&limit=1000"))
    assert_usage_matches(d, tenant_get(world["key"], "/v1/usage?group_by=day,model&limit=1000"))

    alerts = admin("GET", f"/tenants/{acme['id']}/alerts")["data"]
    shown = sorted(data(r, "alert-id") for r in d.find_elements(By.CSS_SELECTOR, "#alerts tr[data-alert-id]"))
    assert shown == sorted(a["alert_id"] for a in alerts) and len(shown) == 3

    keys = admin("GET", f"/tenants/{acme['id']}/keys?limit=100")["data"]
    rows = {data(r, "key-id"): r for r in d.find_elements(By.CSS_SELECTOR, "#keys tr[data-key-id]")}
    assert set(rows) == {k["key_id"] for k in keys}
    for k in keys:
        assert data(rows[k["key_id"]], "last-used-at") == ("" if k["last_used_at"] is None else str(k["last_used_at"]))
        assert k["prefix"] in rows[k["key_id"]].text
    used = [k for k in keys if k["name"] == "app"][0]
    assert used["last_used_at"] is not None and "never" not in rows[used["key_id"]].text

    brow = d.find_element(By.CSS_SELECTOR, f"#batches-done tr[data-batch-id='{world['batch']}']")
    assert (data(brow, "status"), data(brow, "total"), data(brow, "completed")) == ("completed", "2", "2")
    assert brow.find_element(By.TAG_NAME, "progress").get_attribute("value") == "2"
    srow = d.find_element(By.CSS_SELECTOR, f"#batches-active tr[data-batch-id='{world['stuck']}']")
    assert (data(srow, "status"), data(srow, "total"), data(srow, "completed")) == ("in_progress", "3", "0")
    assert srow.find_element(By.TAG_NAME, "progress").get_attribute("max") == "3"
    assert "0 done, 0 failed of 3" in srow.text
    listed = {b["id"]: b for b in admin("GET", f"/tenants/{acme['id']}/batches")["data"]}
    for r in d.find_elements(By.CSS_SELECTOR, "#batches-section tr[data-batch-id]"):
        n = listed[data(r, "batch-id")]["request_counts"]
        assert (int(data(r, "total")), int(data(r, "completed")), int(data(r, "failed"))) == \
            (n["total"], n["completed"], n["failed"])
    assert len(listed) == len(d.find_elements(By.CSS_SELECTOR, "#batches-section tr[data-batch-id]"))
    shot(d, "operator-tenant")

    # Revoke a key with the keyboard: Revoke, then Confirm (focused), a real admin call.
    doomed = world["doomed"]
    rows[doomed["key_id"]].find_element(By.TAG_NAME, "button").send_keys(Keys.ENTER)
    confirm = d.switch_to.active_element
    assert confirm.text == "Confirm revoke"
    focus_is_visible(d)
    confirm.send_keys(Keys.ENTER)
    wait(d, lambda d: data(d.find_element(By.CSS_SELECTOR, f"#keys tr[data-key-id='{doomed['key_id']}']"),
                           "revoked") == "true", "the key to be revoked")
    after = {k["key_id"]: k for k in admin("GET", f"/tenants/{acme['id']}/keys?limit=100")["data"]}
    assert after[doomed["key_id"]]["revoked_at"] is not None
    refused = httpx.get(f"{BASE_URL}/v1/models", headers={"authorization": f"Bearer {doomed['secret']}"})
    assert refused.status_code == 401
    assert all(after[k].get("revoked_at") is None for k in after if k != doomed["key_id"])

    no_secret_in_urls(d, wire.collect(), world["secrets"] + [doomed["secret"]])
    assert d.execute_script("return sessionStorage.length + localStorage.length") == 0
    assert d.get_cookies() == []
    no_errors(d)


def test_a_tenant_sees_its_own_usage_and_batches_and_nothing_of_another_tenant(world, browser):
    d = browser
    wire = Wire(d)
    d.get(f"{BASE_URL}/console")
    # Keyboard only: back to the role (operator is checked), down to tenant, on to the token.
    active = d.switch_to.active_element
    active.send_keys(Keys.SHIFT, Keys.TAB)
    d.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    assert d.switch_to.active_element.get_attribute("id") == "role-tenant"
    assert d.find_element(By.ID, "role-tenant").is_selected()
    d.switch_to.active_element.send_keys(Keys.TAB)
    type_token(d, world["reporting"])
    wait(d, loaded, "the tenant's own usage")
    assert d.find_element(By.ID, "detail-title").text == "Your usage"
    assert_usage_matches(d, tenant_get(world["reporting"], "/v1/usage?group_by=day,model&limit=1000"))
    assert d.find_element(By.ID, "keys-section").get_attribute("hidden") is not None
    assert d.find_element(By.ID, "alerts-section").get_attribute("hidden") is not None
    assert d.find_element(By.ID, "back").get_attribute("hidden") is not None
    own = {b["id"] for b in tenant_get(world["reporting"], "/v1/batches?limit=100")["data"]}
    shown = {data(r, "batch-id") for r in d.find_elements(By.CSS_SELECTOR, "#batches-section tr[data-batch-id]")}
    assert shown == own and {world["batch"], world["stuck"]} <= shown
    active = d.find_elements(By.CSS_SELECTOR, "#batches-active tr[data-batch-id]")
    assert [data(r, "batch-id") for r in active] == [world["stuck"]]
    shot(d, "tenant")

    globex = world["globex"]
    source = d.page_source
    for secret in (globex["id"], globex["name"], world["acme"]["id"]):
        # Not even its own tenant id: the page only knows what its key may read.
        assert secret not in source
    wire.collect()
    assert wire.bodies, "the page's responses were captured"
    assert not [u for u in wire.urls if "/admin/" in u]
    for body in wire.bodies:
        assert globex["id"] not in body and globex["name"] not in body
    no_secret_in_urls(d, wire, world["secrets"])
    no_errors(d)

    # Signing out leaves nothing of the tenant on the page.
    d.find_element(By.ID, "sign-out").send_keys(Keys.ENTER)
    wait(d, lambda d: d.find_element(By.ID, "sign-in").get_attribute("hidden") is None, "the sign-in form")
    assert d.switch_to.active_element.get_attribute("id") == "token"
    assert not d.find_elements(By.CSS_SELECTOR, "tr[data-batch-id], tr[data-day], svg.usage-chart")


def test_a_refused_token_is_said_and_nothing_is_shown(browser):
    d = browser
    wire = Wire(d)
    d.get(f"{BASE_URL}/console")
    wrong = "tadm_" + "0" * 43
    type_token(d, wrong)
    error = wait(d, lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").text else None,
                 "the error")
    assert "invalid admin token" in error.text
    assert d.find_element(By.ID, "sign-in").get_attribute("hidden") is None
    assert d.find_element(By.ID, "operator").get_attribute("hidden") is not None
    assert d.find_element(By.ID, "token").get_attribute("value") == ""
    shot(d, "refused")
    no_secret_in_urls(d, wire.collect(), [wrong])
    # The refused call is the only thing the browser reports.
    no_errors(d, allowed=("401",))
