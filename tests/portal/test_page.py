"""The portal page: server-rendered HTML (no JavaScript), checked over HTTP and end to end in
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium) with
screenshots kept under ``tests/artifacts/portal/``."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg

from cgm.api.server import ApiThread, _bind
from cgm.config import Settings
from cgm.portal import loader, store
from tests.api.conftest import PASSWORD, client, make_user, pool  # noqa: F401
from tests.portal.conftest import client as client_number
from tests.portal.conftest import tag, unit, write
from tests.portal.test_api import DAY, _setup

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "portal"


async def test_page_over_http(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = await _setup(db_url, tmp_path)
    q = {"view": "day", "day": DAY.isoformat()}
    r = await client.get("/api/v1/portal/page", params=q, auth=(s["names"]["other"], PASSWORD))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "<script" not in html
    assert s["m1"] in html and "associated" in html and s["m2"] not in html
    assert html.count('class="estimated"') == 1 and html.count('class="measured"') == 23
    assert "estimated 1 h" in html and 'id="status-totals"' not in html
    # Another unit's meter, or another unit's page: 403.
    r = await client.get(
        "/api/v1/portal/page",
        params={**q, "meter": s["m2"]},
        auth=(s["names"]["other"], PASSWORD),
    )
    assert r.status_code == 403
    # The association lookup tells who owns the client number and its meters.
    cur = s["owner"]["client_numbers"][0]
    r = await client.get(
        "/api/v1/portal/page",
        params={**q, "company": "chilquinta", "client_number": cur["number"]},
        auth=(s["names"]["stranger"], PASSWORD),
    )
    assert f"Already registered by unit {s['owner']['code']}" in r.text and s["m1"] in r.text
    # A service user sees the status report.
    name, pw = await make_user(db_url, 1)
    r = await client.get("/api/v1/portal/page", params=q, auth=(name, pw))
    assert 'id="status-totals"' in r.text and 'id="units"' in r.text


async def test_page_in_headless_chromium(
    db_url: str, tmp_path: Path, chromium_programs: tuple[str, str]
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By

    chrome, driver_path = chromium_programs
    s = await _setup(db_url, tmp_path)
    api = ApiThread(db_url, Settings(database_url=db_url), _bind("127.0.0.1", 0), None)
    await api.start()
    port = api.sock.getsockname()[1]
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1000,1100"):  # fmt: skip
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=DriverService(driver_path), options=opts)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        import base64

        token = base64.b64encode(f"{s['names']['owner']}:{PASSWORD}".encode()).decode()
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
        )
        base = f"http://127.0.0.1:{port}/api/v1/portal/page"
        browser.get(f"{base}?view=day&day={DAY.isoformat()}")
        rows = browser.find_elements(By.CSS_SELECTOR, "#meters tr")
        assert len(rows) == 3  # header + the two meters the owner has
        est = browser.find_elements(By.CSS_SELECTOR, "#chart rect.estimated")
        assert len(est) == 1 and est[0].size["height"] > 0
        assert "estimated 1 h" in browser.find_element(By.ID, "totals").text
        browser.save_screenshot(str(ARTIFACTS / "day.png"))
        # Navigation by link: the month view, days as bars, the estimated part on day 10.
        _follow(browser, browser.find_element(By.LINK_TEXT, "month"))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart rect.estimated")) == 1
        assert "month of" in browser.find_element(By.CSS_SELECTOR, "h2:nth-of-type(2)").text
        browser.save_screenshot(str(ARTIFACTS / "month.png"))
        # The association lookup, through the form.
        number = s["owner"]["client_numbers"][0]["number"]
        browser.find_element(By.NAME, "company").send_keys("Chilquinta")
        browser.find_element(By.NAME, "client_number").send_keys(number)
        _follow(browser, browser.find_element(By.CSS_SELECTOR, "#lookup button"))
        text = browser.find_element(By.ID, "lookup-result").text
        assert f"Already registered by unit {s['owner']['code']}" in text
        browser.save_screenshot(str(ARTIFACTS / "lookup.png"))
    finally:
        browser.quit()
        await api.stop()
    assert (ARTIFACTS / "day.png").stat().st_size > 1000


def _follow(browser, element) -> None:  # noqa: ANN001 - selenium WebDriver, WebElement
    """Click a link or a submit button and wait for the next page: a click returns before
    the browser has loaded it, and the old page's elements would be read meanwhile."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    old = browser.find_element("tag name", "html")
    element.click()

    def unloaded(_: object) -> bool:
        # Chromium reports a replaced page's node either as stale or as "Node with given id
        # does not belong to the document" (a plain WebDriverException): both mean it left.
        try:
            old.is_enabled()
        except WebDriverException:  # StaleElementReferenceException is one too
            return True
        return False

    WebDriverWait(browser, 30).until(unloaded)
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
    )


def _set_user(browser, name: str) -> None:  # noqa: ANN001 - a selenium WebDriver
    """Every request of the browser from now on authenticates as ``name`` (HTTP Basic)."""
    import base64

    token = base64.b64encode(f"{name}:{PASSWORD}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


async def test_shared_meter_association_and_owner_forms_in_headless_chromium(
    db_url: str, tmp_path: Path, chromium_programs: tuple[str, str]
) -> None:
    """A unit finds the client number, associates with one of its meters through the form
    and reads it; it gets no edit form and a forged edit post is refused with the owner's
    name; the owner edits the meter and loads an invoice through its forms."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By

    chrome, driver_path = chromium_programs
    s = await _setup(db_url, tmp_path)
    number = s["owner"]["client_numbers"][0]["number"]
    api = ApiThread(db_url, Settings(database_url=db_url), _bind("127.0.0.1", 0), None)
    await api.start()
    port = api.sock.getsockname()[1]
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1000,1400"):  # fmt: skip
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=DriverService(driver_path), options=opts)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}/api/v1/portal/page"
    try:
        # The stranger unit has no meters yet; it enters company and client number.
        _set_user(browser, s["names"]["stranger"])
        browser.get(f"{base}?view=day&day={DAY.isoformat()}")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#meters tr")) == 1  # header only
        browser.find_element(By.NAME, "company").send_keys("Chilquinta")
        browser.find_element(By.NAME, "client_number").send_keys(number)
        _follow(browser, browser.find_element(By.CSS_SELECTOR, "#lookup button"))
        assert "Already registered by unit" in browser.find_element(By.ID, "lookup-result").text
        boxes = browser.find_elements(By.CSS_SELECTOR, "#associate input[name=meter]")
        assert sorted(b.get_attribute("value") for b in boxes) == sorted([s["m1"], s["m2"]])
        browser.save_screenshot(str(ARTIFACTS / "associate-form.png"))
        next(b for b in boxes if b.get_attribute("value") == s["m1"]).click()
        _follow(browser, browser.find_element(By.CSS_SELECTOR, "#associate button"))

        # Back on the page (post/redirect/get): associated, reading the meter's day.
        assert "Associated" in browser.find_element(By.ID, "notice").text
        rows = browser.find_elements(By.CSS_SELECTOR, "#meters tr")
        assert len(rows) == 2 and s["m1"] in rows[1].text and "associated" in rows[1].text
        browser.get(f"{base}?meter={s['m1']}&view=day&day={DAY.isoformat()}")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart rect.estimated")) == 1
        text = browser.find_element(By.ID, "read-only").text
        assert f"owned by unit {s['owner']['code']}" in text
        assert browser.find_elements(By.ID, "edit") == []
        browser.save_screenshot(str(ARTIFACTS / "associated-read-only.png"))

        # A forged edit post from the associated unit: refused, naming the owner.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.post(
                f"/api/v1/portal/page/meters/{s['m1']}/edit",
                data={"shared": "on"},
                auth=(s["names"]["stranger"], PASSWORD),
            )
            assert r.status_code == 403 and "only the owner edits it" in r.text
            # A form posted from another site is refused whoever is logged in.
            r = await http.post(
                f"/api/v1/portal/page/meters/{s['m1']}/edit",
                data={"shared": "on"},
                headers={"Origin": "http://evil.example"},
                auth=(s["names"]["owner"], PASSWORD),
            )
            assert r.status_code == 403 and "another site" in r.text

        # The owner: edit form (shared off), then an invoice.
        _set_user(browser, s["names"]["owner"])
        browser.get(f"{base}?meter={s['m1']}&view=day&day={DAY.isoformat()}")
        shared = browser.find_element(By.CSS_SELECTOR, "#edit input[name=shared]")
        assert shared.is_selected()
        shared.click()
        _follow(browser, browser.find_element(By.CSS_SELECTOR, "#edit button"))
        assert "Meter updated" in browser.find_element(By.ID, "notice").text
        # Back on the view it was posted from.
        assert f"day of {DAY.isoformat()}" in browser.find_element(By.TAG_NAME, "body").text
        row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#meters tr")
                   if s["m1"] in r.text)  # fmt: skip
        assert "False" in row.text
        assert not browser.find_element(By.CSS_SELECTOR, "#edit input[name=shared]").is_selected()
        for name, value in (("period_start", "2026-03-01"), ("period_end", "2026-03-31")):
            field = browser.find_element(By.CSS_SELECTOR, f"#invoice input[name={name}]")
            browser.execute_script("arguments[0].value = arguments[1]", field, value)
        browser.find_element(By.CSS_SELECTOR, "#invoice input[name=energy_kwh]").send_keys("812.5")
        browser.find_element(By.CSS_SELECTOR, "#invoice input[name=amount]").send_keys("120000")
        browser.find_element(By.CSS_SELECTOR, "#invoice input[name=invoice_number]").send_keys(
            "F-77"
        )
        _follow(browser, browser.find_element(By.CSS_SELECTOR, "#invoice button"))
        assert "Invoice loaded" in browser.find_element(By.ID, "notice").text
        invoice_rows = browser.find_elements(By.CSS_SELECTOR, "#invoices tr")
        assert len(invoice_rows) == 2 and "F-77" in invoice_rows[1].text
        assert "812.5" in invoice_rows[1].text
        browser.save_screenshot(str(ARTIFACTS / "owner-forms.png"))
    finally:
        browser.quit()
        await api.stop()
    assert (ARTIFACTS / "associate-form.png").stat().st_size > 1000


async def test_whole_shared_meter_life_on_the_page_in_headless_chromium(
    db_url: str, tmp_path: Path, chromium_programs: tuple[str, str]
) -> None:
    """The whole shared-meter life through the page: a unit creates a client number and its
    meters; another unit entering the same pair is told that it exists and associates with
    one meter; it reads it and gets no edit form (a forged edit is refused); the owner edits
    it; an administrator changes the owner with a reason (logged), after which the new owner
    edits and the old one reads only."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    chrome, driver_path = chromium_programs
    s = await _setup(db_url, tmp_path)
    creator, joiner = s["stranger"], s["other"]  # units without this client number
    number, m1, m2 = tag(), f"M{tag()}", f"M{tag()}"
    admin = await make_user(db_url, 2)
    api = ApiThread(db_url, Settings(database_url=db_url), _bind("127.0.0.1", 0), None)
    await api.start()
    port = api.sock.getsockname()[1]
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1000,1400"):  # fmt: skip
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=DriverService(driver_path), options=opts)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}/api/v1/portal/page"
    css = browser.find_element

    def lookup() -> str:
        css(By.NAME, "company").send_keys("Chilquinta")
        css(By.NAME, "client_number").send_keys(number)
        _follow(browser, css(By.CSS_SELECTOR, "#lookup button"))
        return css(By.ID, "lookup-result").text

    try:
        # 1. Create: the creator unit is told the pair is free and fills in the form.
        _set_user(browser, s["names"]["stranger"])
        browser.get(f"{base}?view=day&day={DAY.isoformat()}")
        assert lookup().startswith("Not registered")
        assert browser.find_elements(By.ID, "owner") == []  # not an administrator
        css(By.CSS_SELECTOR, "#create input[name=tariff_type]").send_keys("BT-1")
        css(By.CSS_SELECTOR, "#create input[name=connected_power_kw]").send_keys("12.5")
        for i, m in enumerate((m1, m2)):
            css(By.CSS_SELECTOR, f"#create input[name=m{i}_number]").send_keys(m)
            css(By.CSS_SELECTOR, f"#create input[name=m{i}_shared]").click()
        browser.save_screenshot(str(ARTIFACTS / "life-1-create-form.png"))
        _follow(browser, css(By.CSS_SELECTOR, "#create button"))
        assert "Client number created" in css(By.ID, "notice").text
        rows = {r.find_elements(By.TAG_NAME, "td")[0].text: r.text
                for r in browser.find_elements(By.CSS_SELECTOR, "#meters tr")[1:]}  # fmt: skip
        assert set(rows) == {m1, m2} and all("owner" in t for t in rows.values())
        assert css(By.ID, "edit")  # the owner's form
        browser.save_screenshot(str(ARTIFACTS / "life-2-created.png"))
        # An administrator links meter 1 to the CGM meter that reads it (inventory import).
        linked = unit(creator["code"], **{k: v for k, v in creator.items() if k != "code"},
                      client_numbers=[client_number(number, [m1, m2])])  # fmt: skip
        linked["client_numbers"][0]["meters"][0]["cgm"] = {"frontier": s["fr"].code}
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await store.import_inventory(conn, loader.load(write(tmp_path / "l.yaml", [linked])),
                                         "test")  # fmt: skip
            await conn.commit()

        # 2. Another unit enters the same pair in the creation form: it exists; associate.
        _set_user(browser, s["names"]["other"])
        browser.get(f"{base}?view=day&day={DAY.isoformat()}")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.post("/api/v1/portal/page/client-numbers", data={
                "company": "chilquinta", "client_number": number, "tariff_type": "BT-1",
                "m0_number": f"M{tag()}"}, auth=(s["names"]["other"], PASSWORD))  # fmt: skip
            assert r.status_code == 409 and "associate with its meters instead" in r.text
        assert "Already registered by unit " + creator["code"] in lookup()
        assert browser.find_elements(By.ID, "create") == []
        boxes = browser.find_elements(By.CSS_SELECTOR, "#associate input[name=meter]")
        assert sorted(b.get_attribute("value") for b in boxes) == sorted([m1, m2])
        next(b for b in boxes if b.get_attribute("value") == m1).click()
        _follow(browser, css(By.CSS_SELECTOR, "#associate button"))
        assert "Associated" in css(By.ID, "notice").text

        # 3. It reads the meter as associated: the chart, and no edit form.
        browser.get(f"{base}?meter={m1}&view=day&day={DAY.isoformat()}")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart rect.estimated")) == 1
        assert f"owned by unit {creator['code']}" in css(By.ID, "read-only").text
        assert browser.find_elements(By.ID, "edit") == []
        browser.save_screenshot(str(ARTIFACTS / "life-3-associated.png"))
        # 4. Edit refused (a forged post), naming the owner.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.post(f"/api/v1/portal/page/meters/{m1}/edit", data={"smart": "on"},
                                auth=(s["names"]["other"], PASSWORD))  # fmt: skip
            assert r.status_code == 403
            assert f"owned by unit {creator['code']}; only the owner edits it" in r.text

        # 5. The owner edits (shared off).
        _set_user(browser, s["names"]["stranger"])
        browser.get(f"{base}?meter={m1}&view=day&day={DAY.isoformat()}")
        css(By.CSS_SELECTOR, "#edit input[name=shared]").click()
        _follow(browser, css(By.CSS_SELECTOR, "#edit button"))
        assert "Meter updated" in css(By.ID, "notice").text
        assert not css(By.CSS_SELECTOR, "#edit input[name=shared]").is_selected()

        # 6. Change of owner: offered to administrators only; with a reason; logged.
        _set_user(browser, admin[0])
        browser.get(f"{base}?view=day&day={DAY.isoformat()}")
        lookup()
        choice = Select(css(By.CSS_SELECTOR, "#owner select[name=new_owner]"))
        assert creator["code"] not in [o.get_attribute("value") for o in choice.options]
        choice.select_by_value(joiner["code"])
        css(By.CSS_SELECTOR, "#owner input[name=reason]").send_keys("the building changed hands")
        browser.save_screenshot(str(ARTIFACTS / "life-4-owner-form.png"))
        _follow(browser, css(By.CSS_SELECTOR, "#owner button"))
        assert "Owner changed" in css(By.ID, "notice").text
        assert f"Already registered by unit {joiner['code']}" in css(By.ID, "lookup-result").text
        browser.save_screenshot(str(ARTIFACTS / "life-5-owner-changed.png"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.post("/api/v1/portal/page/client-numbers/owner", data={
                "company": "Chilquinta", "client_number": number, "new_owner": creator["code"],
                "reason": "back"}, auth=(s["names"]["other"], PASSWORD))  # fmt: skip
            assert r.status_code == 403 and "administrator" in r.text  # a unit's user

        # The new owner edits; the old owner reads only.
        _set_user(browser, s["names"]["other"])
        browser.get(f"{base}?meter={m1}&view=day&day={DAY.isoformat()}")
        assert css(By.ID, "edit")
        _set_user(browser, s["names"]["stranger"])
        browser.get(f"{base}?meter={m1}&view=day&day={DAY.isoformat()}")
        assert f"owned by unit {joiner['code']}" in css(By.ID, "read-only").text
        browser.save_screenshot(str(ARTIFACTS / "life-6-old-owner-reads.png"))
    finally:
        browser.quit()
        await api.stop()
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(
            """SELECT username, status, reason FROM api_access
               WHERE path = '/api/v1/portal/page/client-numbers/owner' AND username = ANY(%s)
               ORDER BY id""",
            ([admin[0], s["names"]["other"]],),
        )
        assert await cur.fetchall() == [(admin[0], 303, "the building changed hands"),
                                        (s["names"]["other"], 403, "back")]  # fmt: skip
        log = await store.owner_changes(conn, "Chilquinta", number)
        assert [(e["old_owner"], e["new_owner"], e["actor"]) for e in log] == [
            (creator["code"], joiner["code"], f"api:{admin[0]}")]  # fmt: skip
