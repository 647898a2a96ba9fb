#!/usr/bin/env python3
"""Loads every dashboard page of a running `faccia serve` in a real headless Chromium and checks
that the numbers on the page equal SQL's over `/query`, that no page logs a console error, and
saves a screenshot of each page (1200 and 800 px wide) to a temporary directory (never in git).

    python3 tools/check_dashboard.py --http http://127.0.0.1:4749 --token-file DATA/analyst-token \
        [--token TOKEN] [--chromium /usr/bin/chromium] [--screenshots DIR] [--faccia BIN --data-dir DIR]

The browser logs in through the `/login` form (the HttpOnly cookie), like a person. `--token`
overrides the token file. With `--faccia` and `--data-dir`, a second pass makes a token scoped
to one comune (`faccia tokens add`) and checks that its pages equal its SQL, name no other
comune, and answer 404 for another comune's page. Playwright (PyPI) drives the
Debian Chromium given by `--chromium`; Playwright's own browser download is not used.
Exits non-zero naming the first page and number that differ.
"""

import argparse
import datetime
import json
import subprocess
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


def check(browser, http, token, shots, prefix="", only=None):
    """Logs in with `token` and checks every page against SQL run with the same token.

    With `only` (a six-digit ISTAT code), the token is scoped to that comune: no page may name
    another comune, and another comune's page must answer 404."""
    index = sql(http, token, "SELECT service, votes, csat_pct FROM service_index")
    if not index:
        fail(f"{prefix}service_index is empty: run the check against a server with votes")
    comuni = sql(http, token, "SELECT istat_code, votes FROM municipality_index ORDER BY votes DESC, istat_code LIMIT 1")
    code = comuni[0]["istat_code"]
    if only and code != only:
        fail(f"{prefix}a token scoped to {only} sees comune {code} in municipality_index")
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

    def only_mine(path):
        """With a scoped token: every comune the page names (links, data attributes) is `only`."""
        if not only:
            return
        named = page.eval_on_selector_all("[data-municipality], a[href^='/municipality/']", """els => els.map(e =>
            e.getAttribute('data-municipality') || e.getAttribute('href').split('/')[2].split('?')[0])""")
        others = sorted(set(n for n in named if n and n != only))
        if others:
            fail(f"{prefix}{path} shows comuni {others} to a token scoped to {only}")

    def visit(path, name):
        response = page.goto(http + path)
        if response.status != 200:
            fail(f"{prefix}{path} answered {response.status}")
        for width in (1200, 800):
            page.set_viewport_size({"width": width, "height": 900})
            page.screenshot(path=f"{shots}/{prefix}{name}-{width}.png", full_page=True)
        page.set_viewport_size({"width": 1200, "height": 900})
        only_mine(path)

    # Without the cookie, the login form; then log in through it.
    response = page.goto(http + "/")
    if response.status != 401 or not page.query_selector("form[action='/login']"):
        fail(f"{prefix}/ without a token answered {response.status}, not the login form")
    page.screenshot(path=f"{shots}/{prefix}login-1200.png")
    bad.clear()  # the 401 just checked
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if "Soddisfazione per servizio" not in page.content():
        fail(f"{prefix}the login form did not lead to the overview")

    visit("/", "overview")
    shown = marked(page, "table.services tr[data-service]", "data-service", ["data-votes", "data-csat"])
    if len(shown) != len(index):
        fail(f"{prefix}/ lists {len(shown)} services, service_index has {len(index)}")
    for row in index:
        cells = shown.get(str(row["service"]))
        if not cells or int(cells["data-votes"]) != row["votes"] or not close(cells["data-csat"], row["csat_pct"]):
            fail(f"{prefix}/ service {row['service']}: page {cells}, SQL {row}")

    visit(f"/municipality/{code}", "municipality")
    rows = marked(page, "table.services tr[data-service]", "data-service", ["data-votes"])
    week = sum(int(r["data-votes"]) for r in rows.values())
    cells = sum(int(c.get_attribute("data-votes")) for c in page.query_selector_all("svg.heat-map g.cell"))
    if week != week_votes or cells != recent_votes:
        fail(f"{prefix}/municipality/{code}: week {week} (SQL {week_votes}), heat map {cells} (SQL {recent_votes})")

    visit("/coverage", "coverage")
    shown = marked(page, "table.regions tr[data-region]", "data-region", ["data-eligible", "data-with-terminals", "data-bonus"])
    for row in regions:
        cells = shown.get(str(row["region_code"]))
        if (not cells or int(cells["data-eligible"]) != row["eligible"]
                or int(cells["data-with-terminals"]) != row["with_terminals"]
                or int(cells["data-bonus"]) != int(row.get("bonus_eur") or 0)):
            fail(f"{prefix}/coverage region {row['region_code']}: page {cells}, SQL {row}")

    visit("/terminals", "terminals")
    shown = marked(page, "table.terminals tr[data-terminal]", "data-terminal", ["data-votes-today"])
    for row in per_terminal:
        cells = shown.get(str(row["terminal"]))
        if cells is not None and int(cells["data-votes-today"]) != row["n"]:
            fail(f"{prefix}/terminals terminal {row['terminal']}: page {cells}, SQL {row}")
    firing = sql(http, token, "SELECT count(*) AS n FROM alerts WHERE state = 'firing'")[0]["n"]
    section = page.query_selector("section#alerts")
    if not section or int(section.get_attribute("data-firing")) != firing:
        fail(f"{prefix}/terminals: alerts firing on the page differ from SQL's {firing}")

    visit("/?lang=en", "overview-en")
    if "Satisfaction by service" not in page.content():
        fail(f"{prefix}/?lang=en is not in English")
    visit("/coverage", "coverage-en")
    if "Programme coverage" not in page.content():
        fail(f"{prefix}the language cookie was not kept")
    if only:
        other = "001001" if only != "001001" else "001003"
        response = page.goto(f"{http}/municipality/{other}")
        if response.status != 404:
            fail(f"{prefix}/municipality/{other} answered {response.status} to a token scoped to {only}, not 404")
        bad.clear()  # the 404 just checked
    context.close()
    errors.extend(bad)
    if errors:
        fail(f"{prefix}console errors: " + "; ".join(errors))


def scoped_token(faccia, data_dir, code):
    """A new token scoped to comune `code`, made with `faccia tokens add` (printed on its last line)."""
    out = subprocess.run([faccia, "tokens", "--data-dir", data_dir, "add", "--scope", f"municipality:{code}",
                          "--label", "check_dashboard"], check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", required=True, help="the server's HTTP address, http://HOST:PORT")
    parser.add_argument("--token-file", help="the analyst token file (DATA_DIR/analyst-token)")
    parser.add_argument("--token", help="the token to log in with (overrides --token-file)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshots", help="where to save screenshots (default: a new temporary directory)")
    parser.add_argument("--faccia", help="the faccia binary: with --data-dir, also check a token scoped to one comune")
    parser.add_argument("--data-dir", help="the server's data directory (for `faccia tokens add`)")
    args = parser.parse_args()
    token = args.token or (open(args.token_file).read().strip() if args.token_file else None)
    if not token:
        fail("give --token or --token-file")
    http = args.http.rstrip("/")
    shots = args.screenshots or tempfile.mkdtemp(prefix="faccia-dashboard-")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        check(browser, http, token, shots)
        scoped = ""
        if args.faccia and args.data_dir:
            # The comune with the fewest votes among those with votes, so that others exist.
            code = sql(http, token, "SELECT istat_code FROM municipality_index ORDER BY votes, istat_code LIMIT 1")[0]["istat_code"]
            check(browser, http, scoped_token(args.faccia, args.data_dir, code), shots, prefix="scoped-", only=code)
            scoped = f"; a token scoped to {code} saw only {code}"
        browser.close()
    print(f"dashboard: every page shows SQL's numbers, no console errors{scoped}; screenshots in {shots}")


if __name__ == "__main__":
    main()
