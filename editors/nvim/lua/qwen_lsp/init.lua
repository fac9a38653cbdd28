-- qwen-lsp for Neovim: one setup() for every version from 0.7 on.
--
--   0.11+  vim.lsp.config / vim.lsp.enable, vim.lsp.completion (the server
--          sends multi-line items as snippets, which vim.snippet expands
--          with the line's indentation), and on 0.12+ vim.lsp.inline_completion
--          (ghost text) with accept / next / previous mappings.
--   0.7-0.10 vim.lsp.start_client + 'omnifunc' (<C-x><C-o>). The built-in
--          complete() cannot put line breaks into the buffer (they show up
--          as ^@), so a CompleteDone hook turns them into real lines.
--
-- Usage (init.lua):
--   vim.opt.runtimepath:append('/path/to/qwen-lsp/editors/nvim')
--   require('qwen_lsp').setup({ settings = { qwen = { model = 'qwen3-coder-flash' } } })
local M = {}

local defaults = {
  name = 'qwen-lsp',
  cmd = { 'qwen-lsp' },
  -- nil means every buffer with a file type.
  filetypes = nil,
  root_markers = { '.git' },
  -- initializationOptions: same keys as the "qwen" section below.
  init_options = nil,
  -- Answers workspace/configuration for the section "qwen".
  settings = { qwen = {} },
  -- Characters that open the completion menu by themselves on 0.11+ (the
  -- server's own trigger characters are always used too). Letters make the
  -- menu follow your typing; leave empty to complete only on <C-x><C-o>
  -- or vim.lsp.completion.get().
  extra_trigger_characters = {},
  inline = true, -- 0.12+: ghost text through vim.lsp.inline_completion
  keys = {
    accept = '<Tab>', -- 0.12+: accept the ghost text (falls back to a Tab)
    next = '<M-]>',
    prev = '<M-[>',
  },
}

local function has(version)
  return vim.fn.has('nvim-' .. version) == 1
end

-- The item our server produced, from a complete-item's user_data (the key
-- layout differs between versions).
local function lsp_item(completed)
  local data = completed and completed.user_data
  if type(data) ~= 'table' then
    return nil
  end
  local nested = data.nvim and data.nvim.lsp and data.nvim.lsp.completion_item
  return nested or data.completion_item or nil
end

-- 0.7-0.10: complete() inserted the word on one line with NUL bytes where
-- the line breaks belong (the API shows them as NUL or as "\n" depending
-- on the version). Put the text back as real lines, cursor after it.
function M.fix_multiline_insert()
  local completed = vim.v.completed_item
  local item = lsp_item(completed)
  local word = completed and completed.word
  if not item or type(word) ~= 'string' or not word:find('\n', 1, true) then
    return
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local line = vim.api.nvim_get_current_line()
  local start = col - #word
  local inserted = line:sub(start + 1, col):gsub('%z', '\n')
  if start < 0 or inserted ~= word then
    return -- not what complete() left behind; do not touch the buffer
  end
  local lines = vim.split(word, '\n', { plain = true })
  vim.api.nvim_buf_set_text(0, row - 1, start, row - 1, col, lines)
  local last = lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row - 1 + #lines, #last })
end

local function legacy_setup(opts)
  local client_id = nil
  local function attach(bufnr)
    if vim.bo[bufnr].buftype ~= '' then
      return
    end
    if not client_id then
      local fname = vim.api.nvim_buf_get_name(bufnr)
      local marker = vim.fn.finddir('.git', vim.fn.fnamemodify(fname, ':p:h') .. ';')
      local root = marker ~= '' and vim.fn.fnamemodify(marker, ':p:h:h') or vim.fn.getcwd()
      client_id = vim.lsp.start_client({
        name = opts.name,
        cmd = opts.cmd,
        root_dir = root,
        init_options = opts.init_options,
        settings = opts.settings,
      })
    end
    if client_id then
      vim.lsp.buf_attach_client(bufnr, client_id)
      vim.bo[bufnr].omnifunc = 'v:lua.vim.lsp.omnifunc'
    end
  end
  local group = vim.api.nvim_create_augroup('qwen_lsp', { clear = true })
  vim.api.nvim_create_autocmd('FileType', {
    group = group,
    pattern = opts.filetypes or '*',
    callback = function(args)
      attach(args.buf)
    end,
  })
  vim.api.nvim_create_autocmd('CompleteDone', {
    group = group,
    callback = M.fix_multiline_insert,
  })
end

local function on_attach_modern(client, bufnr, opts)
  local triggers = client.server_capabilities.completionProvider
  if triggers and #opts.extra_trigger_characters > 0 then
    triggers.triggerCharacters = vim.list_extend(
      vim.deepcopy(triggers.triggerCharacters or {}),
      opts.extra_trigger_characters
    )
  end
  vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = true })
  if opts.inline and vim.lsp.inline_completion then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    local keys = opts.keys
    vim.keymap.set('i', keys.accept, function()
      if not vim.lsp.inline_completion.get() then
        return keys.accept
      end
    end, { expr = true, buffer = bufnr, desc = 'qwen-lsp: accept suggestion' })
    vim.keymap.set('i', keys.next, function()
      vim.lsp.inline_completion.select({ count = 1 })
    end, { buffer = bufnr, desc = 'qwen-lsp: next suggestion' })
    vim.keymap.set('i', keys.prev, function()
      vim.lsp.inline_completion.select({ count = -1 })
    end, { buffer = bufnr, desc = 'qwen-lsp: previous suggestion' })
  end
end

local function modern_setup(opts)
  vim.lsp.config(opts.name, {
    cmd = opts.cmd,
    filetypes = opts.filetypes,
    root_markers = opts.root_markers,
    init_options = opts.init_options,
    settings = opts.settings,
  })
  vim.api.nvim_create_autocmd('LspAttach', {
    group = vim.api.nvim_create_augroup('qwen_lsp', { clear = true }),
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == opts.name then
        on_attach_modern(client, args.buf, opts)
      end
    end,
  })
  vim.lsp.enable(opts.name)
end

function M.setup(user)
  local opts = vim.tbl_deep_extend('force', defaults, user or {})
  if has('0.11') then
    modern_setup(opts)
  else
    legacy_setup(opts)
  end
end

return M
