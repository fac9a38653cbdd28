-- init.lua of a user in a 256-colour terminal, for test_neovim_terminal.py.
--
-- The configuration is the README's and nothing more: 'termguicolors' off
-- (a terminal without truecolor), optionally the user's own ghost-text
-- highlight (QWEN_TEST_USER_HL, JSON for nvim_set_hl, set before setup() as a
-- colorscheme would), editors/nvim on the runtime path, setup({ cmd = ... }).
--
-- The test reads the screen through tmux. For the buffer it calls
-- v:lua.qwen_test_state() over --listen; that function and the counter of
-- inline-completion requests below only observe, they change nothing.
vim.o.termguicolors = false

local user_hl = os.getenv('QWEN_TEST_USER_HL')
if user_hl then
  vim.api.nvim_set_hl(0, 'QwenLspGhost', vim.json.decode(user_hl))
end

vim.opt.runtimepath:append(assert(os.getenv('QWEN_TEST_RTP')))
require('qwen_lsp').setup({ cmd = vim.json.decode(assert(os.getenv('QWEN_TEST_CMD'))) })

local inline_sent = 0
vim.api.nvim_create_autocmd('LspRequest', {
  callback = function(args)
    local request = args.data.request
    if request.type == 'pending' and request.method == 'textDocument/inlineCompletion' then
      inline_sent = inline_sent + 1
    end
  end,
})

function _G.qwen_test_state()
  local client = vim.lsp.get_clients({ bufnr = 0, name = 'qwen-lsp' })[1]
  local pending = 0
  for _, request in pairs(client and client.requests or {}) do
    if request.type == 'pending' then
      pending = pending + 1
    end
  end
  local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
  return vim.json.encode({
    mode = vim.api.nvim_get_mode().mode,
    lines = vim.api.nvim_buf_get_lines(0, 0, -1, false),
    cursor = vim.api.nvim_win_get_cursor(0),
    attached = client ~= nil and client.initialized == true,
    pending = pending,
    inline_sent = inline_sent,
    ghost = ns and vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true }) or {},
    termguicolors = vim.o.termguicolors,
    term = vim.env.TERM,
    colorterm = vim.env.COLORTERM or vim.NIL,
    messages = vim.fn.execute('messages'),
  })
end
