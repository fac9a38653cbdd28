// VS Code client for qwen-lsp: starts the server over stdio and lets
// vscode-languageclient (>= 10.0.1, where inline completion is built in)
// map textDocument/inlineCompletion and textDocument/completion onto the
// editor. Settings under "qwen.*" reach the server through
// workspace/configuration; the server pulls them again on every change.
import * as vscode from 'vscode';
import {
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  TransportKind,
} from 'vscode-languageclient/node';

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel | undefined;
let statusItem: vscode.StatusBarItem | undefined;
let serverState: { state: string; message: string } = { state: 'ok', message: '' };

// The status bar shows whether completions are on and the server's last
// qwen/status notification ({state: "ok" | "starting" | "paused" | "warning" |
// "error", message}): a warning sign while the upstream fails or holds
// completions back, or the settings have a problem, until the server reports
// "ok" again.
function renderStatus(): void {
  if (!statusItem) {
    return;
  }
  const on = vscode.workspace.getConfiguration('qwen').get<boolean | null>('enabled') !== false;
  const failing = ['error', 'paused', 'warning'].includes(serverState.state);
  statusItem.text = !on ? '$(circle-slash) Qwen' : failing ? '$(warning) Qwen' : '$(sparkle) Qwen';
  statusItem.tooltip = !on
    ? 'Qwen completions are off (click to turn on)'
    : failing
      ? `Qwen: ${serverState.message} (click to turn completions off)`
      : 'Qwen completions are on (click to turn off)';
  statusItem.show();
}

function serverOptions(): ServerOptions {
  const configured = vscode.workspace
    .getConfiguration('qwenLsp')
    .get<string[]>('serverCommand');
  const argv = configured && configured.length > 0 ? configured : ['qwen-lsp'];
  return { command: argv[0], args: argv.slice(1), transport: TransportKind.stdio };
}

function clientOptions(): LanguageClientOptions {
  return {
    // Every file on disk plus unsaved buffers; the server skips what it
    // should not send upstream (see the "exclude" setting).
    documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
    synchronize: { configurationSection: 'qwen' },
    outputChannel: output,
  };
}

async function startClient(): Promise<void> {
  client = new LanguageClient('qwen-lsp', 'Qwen LSP', serverOptions(), clientOptions());
  client.onNotification('qwen/status', (params: { state?: string; message?: string }) => {
    serverState = { state: params?.state ?? 'ok', message: params?.message ?? '' };
    renderStatus();
  });
  await client.start();
}

// Where the cursor settles (no change for CURSOR_SETTLE_MS): the server warms
// the local engine up there, so the first suggestion after a jump is quick.
const CURSOR_SETTLE_MS = 150;
let cursorTimer: ReturnType<typeof setTimeout> | undefined;

function cursorMoved(e: vscode.TextEditorSelectionChangeEvent): void {
  if (cursorTimer) {
    clearTimeout(cursorTimer);
  }
  const doc = e.textEditor.document;
  const pos = e.selections[0]?.active;
  if (!pos || (doc.uri.scheme !== 'file' && doc.uri.scheme !== 'untitled')) {
    return;
  }
  cursorTimer = setTimeout(() => {
    cursorTimer = undefined;
    if (client?.isRunning()) {
      void client.sendNotification('qwen/cursor', {
        textDocument: { uri: client.code2ProtocolConverter.asUri(doc.uri) },
        position: { line: pos.line, character: pos.character },
      });
    }
  }, CURSOR_SETTLE_MS);
}

async function stopClient(): Promise<void> {
  const old = client;
  client = undefined;
  if (old) {
    await old.stop();
  }
}

async function runServerCommand(command: string): Promise<unknown> {
  if (!client) {
    throw new Error('the qwen-lsp server is not running');
  }
  return client.sendRequest(ExecuteCommandRequest.type, { command, arguments: [] });
}

async function showStatus(): Promise<void> {
  try {
    const [status, stats] = await Promise.all([
      runServerCommand('qwen.status'),
      runServerCommand('qwen.stats'),
    ]);
    output?.info('qwen.status: ' + JSON.stringify(status, null, 2));
    output?.info('qwen.stats: ' + JSON.stringify(stats, null, 2));
    output?.show(true);
    const s = (stats ?? {}) as Record<string, unknown>;
    void vscode.window.showInformationMessage(
      `Qwen: provider ${String(s.provider)}, model ${String(s.model)}, mode ${String(s.mode)}` +
        ' (details in the "Qwen LSP" output).',
    );
  } catch (err) {
    void vscode.window.showErrorMessage(`Qwen: status failed: ${String(err)}`);
  }
}

async function restart(): Promise<void> {
  try {
    await stopClient();
    await startClient();
    void vscode.window.showInformationMessage('Qwen: server restarted.');
  } catch (err) {
    void vscode.window.showErrorMessage(`Qwen: restart failed: ${String(err)}`);
  }
}

// Flips "qwen.enabled" in the user settings; the server pulls the change.
async function toggle(): Promise<void> {
  const config = vscode.workspace.getConfiguration('qwen');
  const wasOn = config.get<boolean | null>('enabled') !== false;
  await config.update('enabled', !wasOn, vscode.ConfigurationTarget.Global);
  vscode.window.setStatusBarMessage(`Qwen completions ${wasOn ? 'off' : 'on'}`, 3000);
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel('Qwen LSP', { log: true });
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.command = 'qwen.toggle';
  renderStatus();
  context.subscriptions.push(
    output,
    statusItem,
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration('qwen.enabled')) {
        renderStatus();
      }
    }),
    vscode.commands.registerCommand('qwen.showStatus', showStatus),
    vscode.commands.registerCommand('qwen.restart', restart),
    vscode.commands.registerCommand('qwen.toggle', toggle),
    vscode.window.onDidChangeTextEditorSelection(cursorMoved),
  );
  await startClient();
}

export function deactivate(): Promise<void> {
  return stopClient();
}
