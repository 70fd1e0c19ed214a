// The dashboard in a real browser: Debian's chromium driven by playwright-core, each page
// scanned by axe-core. Run by cli/tests/it/dashboard.rs against a `baton serve` it started,
// with a run of `app` waiting for production's approval:
//
//   node dashboard.cjs <base URL> <approver token> <artifact dir>
//
// It signs in, reads the board, opens the run, approves production from the page and
// watches the board (never reloaded) reach production deployed. It prints one JSON
// object of what it saw for the Rust test to assert on, and exits non-zero on any step
// that did not happen.
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');
const axe = require('axe-core');

const [base, token, artifacts] = process.argv.slice(2);
if (!base || !token || !artifacts) {
  console.error('usage: node dashboard.cjs <base URL> <approver token> <artifact dir>');
  process.exit(2);
}
fs.mkdirSync(artifacts, { recursive: true });

// Accessibility: the rules of WCAG 2.1 A and AA; serious and critical findings fail.
async function scan(page, name) {
  // Through the debugger protocol: the page's policy allows no inline script (and this
  // test does not relax it, so the dashboard's own script is checked under it too).
  await page.evaluate(axe.source);
  const result = await page.evaluate(async () =>
    await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  return { page: name, violations: bad.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')) })), passes: result.passes.length };
}

const cellText = (page, env) => page.locator(`td.cell[data-env="${env}"]`).innerText();

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.BATON_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const out = { scans: [], console_errors: [] };
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    const board = await context.newPage();
    board.on('console', (m) => { if (m.type() === 'error') out.console_errors.push(m.text()); });
    board.on('pageerror', (e) => out.console_errors.push(String(e)));

    // Signed out, the board sends the browser to sign in.
    await board.goto(base + '/');
    out.login_url = new URL(board.url()).pathname;
    out.scans.push(await scan(board, 'login'));
    await board.fill('#token', token);
    await Promise.all([board.waitForURL(base + '/'), board.press('#token', 'Enter')]);
    await board.waitForSelector('#board');
    out.signed_in_as = (await board.locator('header .who strong').innerText()).trim();
    out.staging_before = await cellText(board, 'staging');
    out.production_before = await cellText(board, 'production');
    // DORA's figures are computed in the background once the board asks, and arrive live.
    await board.waitForSelector('#dora table', { timeout: 20000 });
    out.scans.push(await scan(board, 'board'));
    await board.screenshot({ path: path.join(artifacts, 'board.png'), fullPage: true });

    // The page that is never reloaded: a marker survives only without a reload.
    await board.evaluate(() => { window.__batonMarker = 'still here'; });
    // Wait until the live connection is up.
    await board.waitForFunction(() => document.getElementById('live-status').textContent === 'live', null, { timeout: 10000 });

    // The run page, from the board's pending approval link, in a second tab.
    const href = await board.locator('td.cell[data-env="production"] .pending a').getAttribute('href');
    const run = await context.newPage();
    run.on('pageerror', (e) => out.console_errors.push(String(e)));
    await run.goto(base + href);
    out.run_status_before = (await run.locator('#run-h .badge').innerText()).trim();
    out.scans.push(await scan(run, 'run'));
    await run.screenshot({ path: path.join(artifacts, 'run.png'), fullPage: true });

    // Approve production from the page, with the keyboard: focus the comment, type,
    // tab to the Approve button and press Enter.
    await run.focus('#comment-production');
    await run.keyboard.type('looks good in staging (from the browser)');
    await run.keyboard.press('Tab');
    out.focused_button = await run.evaluate(() => document.activeElement && document.activeElement.textContent.trim());
    await Promise.all([run.waitForURL(/\/runs\//), run.keyboard.press('Enter')]);
    await run.waitForSelector('#approvals .approval[data-env="production"] .badge');

    // The board follows by itself: production shows the new image live, nothing pending.
    await board.waitForFunction(() => {
      const cell = document.querySelector('td.cell[data-env="production"]');
      return cell && !cell.querySelector('.pending') && /deployed/.test(cell.textContent);
    }, null, { timeout: 30000 });
    out.production_after = await cellText(board, 'production');
    out.marker = await board.evaluate(() => window.__batonMarker || null);
    out.live_updates = Number(await board.evaluate(() => document.body.dataset.updates || 0));
    await run.waitForFunction(() => /deployed/.test(document.querySelector('#run-h .badge').textContent), null, { timeout: 30000 });
    out.run_status_after = (await run.locator('#run-h .badge').innerText()).trim();
    out.approval_after = await run.locator('#approvals .approval[data-env="production"]').innerText();
    await board.screenshot({ path: path.join(artifacts, 'board-after.png'), fullPage: true });
    await run.screenshot({ path: path.join(artifacts, 'run-after.png'), fullPage: true });

    // The environment's history page, with its rollback button, and the approvals page.
    await board.goto(base + '/environments/app/production');
    out.history_rows = await board.locator('#history tbody tr').count();
    out.scans.push(await scan(board, 'environment'));
    await board.goto(base + '/approvals');
    out.scans.push(await scan(board, 'approvals'));
    await board.goto(base + '/runs');
    out.scans.push(await scan(board, 'runs'));
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
})().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
