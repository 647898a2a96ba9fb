#!/usr/bin/env python3
"""Loads every dashboard page of a running `faccia serve` in a real headless Chromium and checks
that the numbers on the page equal SQL's over `/query`, that no page logs a console error, and
saves a screenshot of each page (1200 and 800 px wide) to a temporary directory (never in git).

    python3 tools/check_dashboard.py --http http://127.0.0.1:4749 --token-file DATA/analyst-token \
        [--token TOKEN] [--chromium /usr/bin/chromium] [--screenshots DIR]

The browser logs in through the `/login` form (the HttpOnly cookie), like a person. `--token`
overrides the token file (a scoped token's check uses it). Playwright (PyPI) drives the
Debian Chromium given by `--chromium`; Playwright's own browser download is not used.
Exits non-zero naming the first page and number that differ.
"""

import argparse
import datetime
import json
import sys
import tempfile
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright
from zoneinfo import ZoneInfo


def sql(http, token, statement):
    request = urllib.request.Request(
        f"{http}/query?format=json", data=statement.encode(), method="POST",
        headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def marked(page, selector, key, attrs):
    """{key value: {attr: value}} for the elements matching `selector`, reading attrs anywhere inside them."""
    return page.eval_on_selector_all(selector, """(rows, [key, attrs]) => {
        const out = {};
        for (const row of rows) {
            const found = {};
            for (const a of attrs) {
                const el = row.hasAttribute(a) ? row : row.querySelector('[' + a + ']');
                if (el) found[a] = el.getAttribute(a);
            }
            out[row.getAttribute(key)] = found;
        }
        return out;
    }""", [key, attrs])


def close(a, b):
    return abs(float(a) - float(b)) < 1e-9


def fail(message):
    sys.exit(f"check_dashboard: {message}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", required=True, help="the server's HTTP address, http://HOST:PORT")
    parser.add_argument("--token-file", help="the analyst token file (DATA_DIR/analyst-token)")
    parser.add_argument("--token", help="the token to log in with (overrides --token-file)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshots", help="where to save screenshots (default: a new temporary directory)")
    args = parser.parse_args()
    token = args.token or (open(args.token_file).read().strip() if args.token_file else None)
    if not token:
        fail("give --token or --token-file")
    http = args.http.rstrip("/")
    shots = args.screenshots or tempfile.mkdtemp(prefix="faccia-dashboard-")

    index = sql(http, token, "SELECT service, votes, csat_pct FROM service_index")
    if not index:
        fail("service_index is empty: run the check against a server with votes")
    comuni = sql(http, token, "SELECT istat_code, votes FROM municipality_index ORDER BY votes DESC, istat_code LIMIT 1")
    code = comuni[0]["istat_code"]
    # The pages count Italian days: today, this week from Monday, the last 30 days.
    today = datetime.datetime.now(ZoneInfo("Europe/Rome")).date()
    monday = today - datetime.timedelta(days=today.weekday())
    recent = today - datetime.timedelta(days=29)
    where = f"istat_code = '{code}'"
    week_votes = sql(http, token, f"SELECT count(*) AS n FROM counted_votes WHERE {where} AND date >= DATE '{monday}'")[0]["n"]
    recent_votes = sql(http, token, f"SELECT count(*) AS n FROM counted_votes WHERE {where} AND date >= DATE '{recent}'")[0]["n"]
    regions = sql(http, token, "SELECT region_code, eligible, with_terminals, bonus_eur FROM coverage_by_region")
    per_terminal = sql(http, token, f"SELECT terminal, count(*) AS n FROM votes WHERE date = DATE '{today}' GROUP BY terminal")

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        # A failed load is checked by its response below (the browser's own /favicon.ico
        # request is not the dashboard's); any other console error fails the check.
        page.on("console", lambda m: errors.append(f"{page.url}: {m.text}")
                if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        bad = []
        page.on("response", lambda r: bad.append(f"{r.url}: {r.status}")
                if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
        page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))

        def visit(path, name):
            response = page.goto(http + path)
            if response.status != 200:
                fail(f"{path} answered {response.status}")
            for width in (1200, 800):
                page.set_viewport_size({"width": width, "height": 900})
                page.screenshot(path=f"{shots}/{name}-{width}.png", full_page=True)
            page.set_viewport_size({"width": 1200, "height": 900})

        # Without the cookie, the login form; then log in through it.
        response = page.goto(http + "/")
        if response.status != 401 or not page.query_selector("form[action='/login']"):
            fail(f"/ without a token answered {response.status}, not the login form")
        page.screenshot(path=f"{shots}/login-1200.png")
        bad.clear()  # the 401 just checked
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        if "Soddisfazione per servizio" not in page.content():
            fail("the login form did not lead to the overview")

        visit("/", "overview")
        shown = marked(page, "table.services tr[data-service]", "data-service", ["data-votes", "data-csat"])
        if len(shown) != len(index):
            fail(f"/ lists {len(shown)} services, service_index has {len(index)}")
        for row in index:
            cells = shown.get(str(row["service"]))
            if not cells or int(cells["data-votes"]) != row["votes"] or not close(cells["data-csat"], row["csat_pct"]):
                fail(f"/ service {row['service']}: page {cells}, SQL {row}")

        visit(f"/municipality/{code}", "municipality")
        rows = marked(page, "table.services tr[data-service]", "data-service", ["data-votes"])
        week = sum(int(r["data-votes"]) for r in rows.values())
        cells = sum(int(c.get_attribute("data-votes")) for c in page.query_selector_all("svg.heat-map g.cell"))
        if week != week_votes or cells != recent_votes:
            fail(f"/municipality/{code}: week {week} (SQL {week_votes}), heat map {cells} (SQL {recent_votes})")

        visit("/coverage", "coverage")
        shown = marked(page, "table.regions tr[data-region]", "data-region", ["data-eligible", "data-with-terminals", "data-bonus"])
        for row in regions:
            cells = shown.get(str(row["region_code"]))
            if (not cells or int(cells["data-eligible"]) != row["eligible"]
                    or int(cells["data-with-terminals"]) != row["with_terminals"]
                    or int(cells["data-bonus"]) != int(row.get("bonus_eur") or 0)):
                fail(f"/coverage region {row['region_code']}: page {cells}, SQL {row}")

        visit("/terminals", "terminals")
        shown = marked(page, "table.terminals tr[data-terminal]", "data-terminal", ["data-votes-today"])
        for row in per_terminal:
            cells = shown.get(str(row["terminal"]))
            if cells is not None and int(cells["data-votes-today"]) != row["n"]:
                fail(f"/terminals terminal {row['terminal']}: page {cells}, SQL {row}")

        visit("/?lang=en", "overview-en")
        if "Satisfaction by service" not in page.content():
            fail("/?lang=en is not in English")
        visit("/coverage", "coverage-en")
        if "Programme coverage" not in page.content():
            fail("the language cookie was not kept")
        browser.close()
    errors.extend(bad)
    if errors:
        fail("console errors: " + "; ".join(errors))
    print(f"dashboard: every page shows SQL's numbers, no console errors; screenshots in {shots}")


if __name__ == "__main__":
    main()
