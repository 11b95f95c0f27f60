#!/usr/bin/env node
'use strict';
/*
 * Headless Chromium for the Stratus dashboard tests, driven by puppeteer-core.
 *
 * The parent process (tests/ops/browser.py) sends one JSON command a line on stdin and reads
 * one reply a line on stdout ({"id":..,"ok":true,"result":..} or {"id":..,"ok":false,
 * "error":".."}). The browser is Debian's chromium (or --chromium PATH) with a fresh profile.
 *
 *   node browser_host.js --chromium /usr/bin/chromium --profile DIR
 *
 * Commands:
 *   {"cmd":"goto","url":U}                      open U, wait for the load event
 *   {"cmd":"text","selector":S}                 textContent of the first match, or null
 *   {"cmd":"wait_text","selector":S,"pattern":R,"timeout_ms":T}
 *                                               wait until S's textContent matches regex R
 *   {"cmd":"wait","selector":S,"timeout_ms":T}  wait until S exists and is visible
 *   {"cmd":"click","selector":S}
 *   {"cmd":"type","selector":S,"text":X,"replace":bool}
 *   {"cmd":"box","selector":S}                  bounding box {x,y,width,height} or null
 *   {"cmd":"screenshot","path":P}               full-page PNG
 *   {"cmd":"image_stats","path":P}              decode the PNG at P (in a blank page of its
 *                                               own): {width, height, colors (distinct), dominant
 *                                               (share of the commonest colour, 0..1)}
 *   {"cmd":"problems"}                          console errors, page errors, failed requests
 *   {"cmd":"exit"}
 * Every dialog (confirm) is accepted, as an operator clicking OK would.
 */

const puppeteer = require('puppeteer-core');
const readline = require('readline');

function option(name, fallback) {
    const index = process.argv.indexOf(name);
    return index >= 0 ? process.argv[index + 1] : fallback;
}

// Without the background-networking flags Chromium tries to reach Google's services at start,
// and on a closed network its own connections are then refused.
const FLAGS = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage', '--window-size=1280,900',
];

async function main() {
    const browser = await puppeteer.launch({
        executablePath: option('--chromium', '/usr/bin/chromium'),
        headless: true,
        userDataDir: option('--profile'),
        args: FLAGS,
        defaultViewport: { width: 1280, height: 900 },
    });
    const page = await browser.newPage();
    const problems = [];
    page.on('console', (message) => {
        if (message.type() === 'error') problems.push('console: ' + message.text());
    });
    page.on('pageerror', (error) => problems.push('page error: ' + error.message));
    page.on('requestfailed', (request) => {
        problems.push('request failed: ' + request.url() + ' ' + (request.failure() || {}).errorText);
    });
    page.on('dialog', (dialog) => dialog.accept());

    const commands = {
        async goto({ url }) {
            const reply = await page.goto(url, { waitUntil: 'load' });
            return { status: reply.status(), headers: reply.headers() };
        },
        text: ({ selector }) => page.$eval(selector, (node) => node.textContent).catch(() => null),
        async wait_text({ selector, pattern, timeout_ms }) {
            await page.waitForFunction((s, p) => {
                const node = document.querySelector(s);
                return node !== null && new RegExp(p).test(node.textContent);
            }, { timeout: timeout_ms || 10000, polling: 100 }, selector, pattern);
            return page.$eval(selector, (node) => node.textContent);
        },
        async wait({ selector, timeout_ms }) {
            await page.waitForSelector(selector, { visible: true, timeout: timeout_ms || 10000 });
            return true;
        },
        async click({ selector }) {
            await page.waitForSelector(selector, { visible: true, timeout: 10000 });
            await page.click(selector);
            return true;
        },
        async type({ selector, text, replace }) {
            await page.waitForSelector(selector, { visible: true, timeout: 10000 });
            if (replace) await page.$eval(selector, (node) => { node.value = ''; });
            await page.type(selector, text);
            return true;
        },
        async box({ selector }) {
            const handle = await page.$(selector);
            return handle ? handle.boundingBox() : null;
        },
        async screenshot({ path }) {
            await page.screenshot({ path, fullPage: true });
            return path;
        },
        async image_stats({ path }) {
            const data = require('fs').readFileSync(path).toString('base64');
            const scratch = await browser.newPage();
            try {
                return await scratch.evaluate(async (base64) => {
                    const image = new Image();
                    image.src = 'data:image/png;base64,' + base64;
                    await image.decode();
                    const canvas = document.createElement('canvas');
                    canvas.width = image.naturalWidth;
                    canvas.height = image.naturalHeight;
                    const context = canvas.getContext('2d');
                    context.drawImage(image, 0, 0);
                    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
                    const counts = new Map();
                    for (let i = 0; i < pixels.length; i += 4) {
                        const key = (pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2];
                        counts.set(key, (counts.get(key) || 0) + 1);
                    }
                    const commonest = Math.max(...counts.values());
                    return { width: canvas.width, height: canvas.height, colors: counts.size,
                             dominant: commonest / (pixels.length / 4) };
                }, data);
            } finally {
                await scratch.close();
            }
        },
        problems: () => problems.slice(),
        async exit() {
            await browser.close();
            setImmediate(() => process.exit(0));
            return true;
        },
    };

    const send = (reply) => process.stdout.write(JSON.stringify(reply) + '\n');
    send({ event: 'ready', version: await browser.version() });
    const lines = readline.createInterface({ input: process.stdin });
    for await (const line of lines) {
        let command;
        try {
            command = JSON.parse(line);
        } catch (error) {
            send({ ok: false, error: 'bad JSON: ' + error.message });
            continue;
        }
        const handler = commands[command.cmd];
        if (!handler) {
            send({ id: command.id, ok: false, error: 'unknown command ' + command.cmd });
            continue;
        }
        try {
            send({ id: command.id, ok: true, result: await handler(command) });
        } catch (error) {
            send({ id: command.id, ok: false, error: String(error && error.message || error) });
        }
    }
    await browser.close();
}

main().catch((error) => {
    process.stderr.write('browser_host: ' + (error && error.stack || error) + '\n');
    process.exit(1);
});
