// Drives qwen-lsp the way VS Code's client stack does: vscode-jsonrpc over
// stdio, the capabilities vscode-languageclient 10.x declares (UTF-16
// positions only, snippets, insertTextMode asIs/adjustIndentation), clientInfo
// "Visual Studio Code", workspace/configuration answered from this
// extension's package.json defaults. For each case it requests inline and
// menu completions and applies them the way VS Code does, then compares the
// document with the exact expected text.
//
// Environment (set by tests/editors/test_vscode_client.py):
//   QWEN_TEST_SERVER  JSON array: command that starts the server
//   QWEN_TEST_CASES   path of a JSON file: [{name, before, line, after}]
//   QWEN_TEST_ROOT    a directory used as the workspace folder
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const require = createRequire(import.meta.url);
const rpc = require('vscode-languageserver-protocol/node');

const here = path.dirname(new URL(import.meta.url).pathname);
const manifest = JSON.parse(readFileSync(path.join(here, '..', 'package.json'), 'utf8'));
const serverCommand = JSON.parse(process.env.QWEN_TEST_SERVER ?? '["qwen-lsp"]');
const cases = JSON.parse(readFileSync(process.env.QWEN_TEST_CASES, 'utf8'));
const root = process.env.QWEN_TEST_ROOT;

// What VS Code answers for workspace/configuration section "qwen": every
// contributed qwen.* key with its default (all null: "use the server's").
function qwenSection() {
  const section = {};
  for (const [key, spec] of Object.entries(manifest.contributes.configuration.properties)) {
    if (key.startsWith('qwen.')) section[key.slice(5)] = spec.default;
  }
  return section;
}

// The subset of vscode-languageclient 10.x capabilities that matters here
// (copied field by field from its completion/inline features).
const capabilities = {
  general: { positionEncodings: ['utf-16'], markdown: { parser: 'marked', version: '1.1.0' } },
  workspace: { configuration: true, didChangeConfiguration: { dynamicRegistration: true },
    workspaceFolders: true },
  window: { workDoneProgress: true, showMessage: {} },
  textDocument: {
    synchronization: { dynamicRegistration: true, willSave: true, willSaveWaitUntil: true,
      didSave: true },
    completion: {
      dynamicRegistration: true,
      contextSupport: true,
      completionItem: {
        snippetSupport: true, commitCharactersSupport: true,
        documentationFormat: ['markdown', 'plaintext'], deprecatedSupport: true,
        preselectSupport: true, tagSupport: { valueSet: [1] }, insertReplaceSupport: true,
        resolveSupport: { properties: ['documentation', 'detail', 'additionalTextEdits'] },
        insertTextModeSupport: { valueSet: [1, 2] }, labelDetailsSupport: true,
      },
      insertTextMode: 2,
      completionList: { itemDefaults: ['commitCharacters', 'editRange', 'insertTextFormat',
        'insertTextMode', 'data'], applyKindSupport: true },
    },
    inlineCompletion: { dynamicRegistration: true },
  },
};

let proc;
let conn;
let init;

before(async () => {
  proc = spawn(serverCommand[0], serverCommand.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  conn = rpc.createMessageConnection(
    new rpc.StreamMessageReader(proc.stdout), new rpc.StreamMessageWriter(proc.stdin));
  conn.onRequest('workspace/configuration', (params) =>
    params.items.map((item) => (item.section === 'qwen' ? qwenSection() : null)));
  conn.onRequest('client/registerCapability', () => null);
  conn.onRequest('window/workDoneProgress/create', () => null);
  conn.onRequest('window/showMessageRequest', () => null);
  conn.onNotification('window/showMessage', (p) => console.error('showMessage:', p.message));
  conn.listen();
  init = await conn.sendRequest('initialize', {
    processId: process.pid,
    clientInfo: { name: 'Visual Studio Code', version: '1.91.0' },
    rootUri: pathToFileURL(root).href,
    workspaceFolders: [{ uri: pathToFileURL(root).href, name: 'proj' }],
    capabilities,
  });
  await conn.sendNotification('initialized', {});
  // vscode-languageclient's configuration sync sends this right after start.
  await conn.sendNotification('workspace/didChangeConfiguration',
    { settings: { qwen: qwenSection() } });
});

after(async () => {
  await conn.sendRequest('shutdown');
  await conn.sendNotification('exit');
  conn.dispose();
  proc.kill();
});

// JS strings are UTF-16, exactly like VS Code's positions.
function offsetAt(text, pos) {
  const lines = text.split('\n');
  let offset = 0;
  for (let i = 0; i < pos.line; i++) offset += lines[i].length + 1;
  return offset + pos.character;
}

function applyEdit(text, range, newText) {
  return text.slice(0, offsetAt(text, range.start)) + newText + text.slice(offsetAt(text, range.end));
}

// VS Code inserts plain completion text as an escaped snippet; snippet text
// is parsed (only escapes and $0 are expected from this server) and, unless
// insertTextMode is asIs, later lines get the current line's indentation.
function vscodeCompletionText(item, lineText) {
  let text = item.textEdit?.newText ?? item.insertText ?? item.label;
  if (item.insertTextFormat === 2) {
    assert.doesNotMatch(text, /(^|[^\\])\$(\d|\{)(?!0)/, 'unexpected tabstop in snippet');
    text = text.replace(/\$0|\$\{0\}/g, '').replace(/\\([$}\\])/g, '$1');
  }
  const mode = item.insertTextMode ?? capabilities.textDocument.completion.insertTextMode;
  if (mode !== 1) {
    const indent = /^\s*/.exec(lineText)[0];
    text = text.split('\n').map((l, i) => (i === 0 ? l : indent + l)).join('\n');
  }
  return text;
}

test('server negotiates UTF-16 and offers inline completion', () => {
  const caps = init.capabilities;
  assert.ok(caps.positionEncoding === undefined || caps.positionEncoding === 'utf-16',
    `unexpected encoding ${caps.positionEncoding}`);
  assert.ok(caps.inlineCompletionProvider, 'no inlineCompletionProvider');
  assert.ok(caps.completionProvider, 'no completionProvider');
});

for (const [index, c] of cases.entries()) {
  const uri = pathToFileURL(path.join(root, `case${index}.py`)).href;
  const lineText = c.before.split('\n')[c.line];
  const position = { line: c.line, character: lineText.length };

  test(`inline completion lands exactly: ${c.name}`, async () => {
    await conn.sendNotification('textDocument/didOpen',
      { textDocument: { uri, languageId: 'python', version: 1, text: c.before } });
    const res = await conn.sendRequest('textDocument/inlineCompletion', {
      textDocument: { uri }, position,
      context: { triggerKind: 2, selectedCompletionInfo: undefined },
    });
    const items = Array.isArray(res) ? res : res?.items;
    assert.ok(items && items.length > 0, 'no inline items');
    const item = items[0];
    const range = item.range ?? { start: position, end: position };
    assert.equal(range.start.line, range.end.line, 'inline range spans lines');
    assert.equal(range.start.line, position.line);
    const insert = typeof item.insertText === 'string' ? item.insertText : item.insertText.value;
    // VS Code shows ghost text only when the replaced text is a prefix of it.
    const replaced = c.before.slice(offsetAt(c.before, range.start), offsetAt(c.before, position));
    assert.ok(insert.startsWith(replaced));
    assert.equal(applyEdit(c.before, range, insert), c.after);
  });

  test(`completion item lands exactly: ${c.name}`, async () => {
    const res = await conn.sendRequest('textDocument/completion', {
      textDocument: { uri }, position, context: { triggerKind: 1 },
    });
    const items = Array.isArray(res) ? res : res.items;
    assert.equal(items.length, 1);
    const item = items[0];
    assert.ok(!item.label.includes('\n'), 'label must be one line');
    const edit = item.textEdit;
    const range = edit.range ?? edit.replace;
    assert.equal(range.start.line, position.line);
    assert.equal(range.end.line, position.line);
    assert.ok(range.start.character <= position.character);
    assert.ok(range.end.character >= position.character);
    const typed = c.before.slice(offsetAt(c.before, range.start), offsetAt(c.before, position));
    assert.ok((item.filterText ?? item.label).startsWith(typed), 'filterText must match the word');
    assert.equal(applyEdit(c.before, range, vscodeCompletionText(item, lineText)), c.after);
  });
}
