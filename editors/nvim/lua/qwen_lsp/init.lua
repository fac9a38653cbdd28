-- qwen-lsp for Neovim: one setup() for every version from 0.7 on.
--
--   0.11+  vim.lsp.config / vim.lsp.enable, vim.lsp.completion (the server
--          sends multi-line items as snippets, which vim.snippet expands
--          with the line's indentation), and on 0.12+ vim.lsp.inline_completion
--          (ghost text, highlight group QwenLspGhost) with accept / next /
--          previous mappings.
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
  -- Open the completion menu by itself after those characters (0.11+). nil:
  -- only where there is no ghost text (0.11, or inline = false). With ghost
  -- text the menu would compete with it, and with Neovim's default
  -- 'completeopt' (menu,popup) a single item goes straight into the line:
  -- typing "name." put the whole suggestion there while one typed on.
  menu_autotrigger = nil,
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

-- Ghost text. vim.lsp.inline_completion draws it with ComplHint, which
-- Neovim links to NonText; the default colour scheme gives NonText a GUI
-- colour only, so without 'termguicolors' the suggestion looked like typed
-- text. QwenLspGhost is NonText plus a terminal colour (grey, 8) where it has
-- none, defined with default = true: a user's or colour scheme's own
-- QwenLspGhost wins. ComplHint is pointed at it only while it is still
-- Neovim's own link, so a ComplHint of the user's is kept too.
local GHOST_GROUP = 'QwenLspGhost'

function M.define_highlights()
  local nontext = vim.api.nvim_get_hl(0, { name = 'NonText', link = false })
  vim.api.nvim_set_hl(0, GHOST_GROUP, {
    fg = nontext.fg,
    ctermfg = nontext.ctermfg or 8,
    default = true,
  })
  local hint = vim.api.nvim_get_hl(0, { name = 'ComplHint' })
  if hint.link == 'NonText' and vim.tbl_count(hint) == 1 then
    vim.api.nvim_set_hl(0, 'ComplHint', { link = GHOST_GROUP })
  end
end

-- A message longer than the command line opens a hit-enter prompt, which in
-- insert mode stops the typing (a failing upstream sent one as the user
-- typed). Outside normal mode it is shown cut to one line (kept in
-- :messages) and in full, through vim.notify, once normal mode is back.
-- A vim.notify replaced by a plugin (nvim-notify, noice) gets every message
-- as it comes: those do not prompt.
local function builtin_notify()
  local info = debug.getinfo(vim.notify, 'S')
  return info ~= nil and info.source:find('vim/_editor.lua', 1, true) ~= nil
end

local function one_line(text, width)
  text = text:gsub('\n.*', '')
  if vim.fn.strdisplaywidth(text) <= width then
    return text
  end
  local cut = vim.fn.strcharpart(text, 0, math.max(width - 1, 0))
  while cut ~= '' and vim.fn.strdisplaywidth(cut) > width - 1 do
    cut = vim.fn.strcharpart(cut, 0, vim.fn.strchars(cut) - 1)
  end
  return cut .. '…'
end

local deferred = {}

local function flush_deferred()
  local pending = deferred
  deferred = {}
  for _, message in ipairs(pending) do
    vim.notify(message.text, message.level)
  end
end

function M.show_message(_, params, ctx)
  if type(params) ~= 'table' or type(params.message) ~= 'string' then
    return vim.NIL
  end
  local client = vim.lsp.get_client_by_id(ctx.client_id)
  local name = client and client.name or 'qwen-lsp'
  -- The server already names itself at the start of its messages.
  local text = params.message:find(name .. ':', 1, true) == 1 and params.message
    or (name .. ': ' .. params.message)
  local level = ({ vim.log.levels.ERROR, vim.log.levels.WARN, vim.log.levels.INFO })[params.type]
    or vim.log.levels.INFO
  local mode = vim.api.nvim_get_mode().mode
  local fits = not text:find('\n') and vim.fn.strdisplaywidth(text) <= vim.v.echospace
  if mode == 'n' or fits or not builtin_notify() then
    vim.notify(text, level)
    return vim.NIL
  end
  local hl = level == vim.log.levels.ERROR and 'ErrorMsg'
    or level == vim.log.levels.WARN and 'WarningMsg' or 'Normal'
  vim.api.nvim_echo({ { one_line(text, vim.v.echospace), hl } }, true, {})
  table.insert(deferred, { text = text, level = level })
  vim.api.nvim_create_autocmd('ModeChanged', {
    group = vim.api.nvim_create_augroup('qwen_lsp_messages', { clear = true }),
    pattern = '*:n',
    once = true,
    callback = vim.schedule_wrap(flush_deferred),
  })
  return vim.NIL
end

-- Where the cursor settles (no move for 150 ms) is sent as qwen/cursor: the
-- server warms its local engine up there, so the first suggestion after a
-- jump comes quickly.
local function report_cursor(client, bufnr)
  local timer = assert(vim.uv.new_timer())
  vim.api.nvim_create_autocmd({ 'CursorMoved', 'CursorMovedI' }, {
    buffer = bufnr,
    group = vim.api.nvim_create_augroup('qwen_lsp_cursor_' .. bufnr, { clear = true }),
    callback = function()
      timer:stop()
      timer:start(150, 0, vim.schedule_wrap(function()
        if client:is_stopped() or not vim.api.nvim_buf_is_valid(bufnr)
            or vim.api.nvim_get_current_buf() ~= bufnr then
          return
        end
        local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
        client:notify('qwen/cursor', params)
      end))
    end,
  })
end

-- 0.12's vim.lsp.inline_completion keeps its current item, with the range
-- it was asked for, until an answer with items replaces it. Each cursor move
-- draws it again, skipping as many characters as were typed since, whether
-- or not they match it; <Tab> then inserts it at the old position, before
-- what was typed. So an item is checked against the text typed since its
-- range start: text that leaves it makes it stale (hidden, and <Tab> is an
-- ordinary Tab); text that follows it is replaced by it on accept instead of
-- being left after it. The item lives in Neovim's private state; where that
-- looks different (another version) nothing here changes anything.
local function inline_state(bufnr)
  local ok, capability = pcall(require, 'vim.lsp._capability')
  local class = ok and type(capability) == 'table' and type(capability.all) == 'table'
    and capability.all.inline_completion
  local state = type(class) == 'table' and type(class.active) == 'table' and class.active[bufnr]
  local item = type(state) == 'table' and state.current
  if type(item) ~= 'table' or type(item.insert_text) ~= 'string' or type(item.range) ~= 'table'
      or type(state.hide) ~= 'function' then
    return nil
  end
  local start, stop = item.range.start, item.range.end_
  if type(start) ~= 'table' or type(stop) ~= 'table' or type(start.row) ~= 'number'
      or type(stop.row) ~= 'number' then
    return nil
  end
  return state, item
end

-- The text typed since the item's range start, or nil when the cursor is
-- before it (or in another window).
local function typed_since(bufnr, item)
  local win = vim.fn.bufwinid(bufnr)
  if win == -1 or vim.api.nvim_get_current_buf() ~= bufnr then
    return nil
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(win))
  row = row - 1
  local start = item.range.start
  if row < start.row or (row == start.row and col < start.col) then
    return nil
  end
  local ok, lines = pcall(vim.api.nvim_buf_get_text, bufnr, start.row, start.col, row, col, {})
  return ok and table.concat(lines, '\n') or nil
end

local function follows(text, typed)
  return typed ~= nil and text:sub(1, #typed) == typed
end

local function drop_stale_ghost(bufnr)
  local state, item = inline_state(bufnr)
  if state and not follows(item.insert_text, typed_since(bufnr, item)) then
    state.current = nil
    state:hide()
  end
end

-- Accept with what was typed since the item was asked for taken into
-- account: the item's range moved on by the typed text.
local function accept_after_typing(bufnr, item)
  local typed = typed_since(bufnr, item)
  local start, stop = item.range.start, item.range.end_
  if not follows(item.insert_text, typed) or stop.row ~= start.row then
    return
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  row = row - 1
  local lines = vim.split(item.insert_text, '\n', { plain = true })
  -- What the range replaced (auto-closed characters) now sits after the cursor.
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
  local end_col = math.min(col + (stop.col - start.col), #line)
  vim.api.nvim_buf_set_text(bufnr, start.row, start.col, row, end_col, lines)
  vim.api.nvim_win_set_cursor(0, {
    start.row + #lines,
    (#lines == 1 and start.col or 0) + #lines[#lines],
  })
  if item.command then
    local client = vim.lsp.get_client_by_id(item.client_id)
    if client then
      client:exec_cmd(item.command, { bufnr = bufnr })
    end
  end
end

local function on_attach_modern(client, bufnr, opts)
  report_cursor(client, bufnr)
  local triggers = client.server_capabilities.completionProvider
  if triggers and #opts.extra_trigger_characters > 0 and opts.menu_autotrigger ~= false then
    triggers.triggerCharacters = vim.list_extend(
      vim.deepcopy(triggers.triggerCharacters or {}),
      opts.extra_trigger_characters
    )
  end
  local autotrigger = opts.menu_autotrigger
  if autotrigger == nil then
    autotrigger = not (opts.inline and vim.lsp.inline_completion)
  end
  vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = autotrigger })
  -- With a single item and no 'menuone' (Neovim's default 'completeopt')
  -- there is no menu: the item is already in the line, and <C-y> applies it,
  -- leaves completion and then goes on as i_CTRL-Y, inserting the character
  -- above the cursor after the item. That character is taken out again. A
  -- <C-y> mapping of the user's own is left alone.
  local ctrl_y_without_menu = false
  local ours = 'qwen-lsp: accept the completion item'
  local existing = vim.fn.maparg('<C-y>', 'i', false, true)
  if vim.tbl_isempty(existing) or existing.desc == ours then
    vim.keymap.set('i', '<C-y>', function()
      local info = vim.fn.complete_info({ 'mode', 'pum_visible' })
      ctrl_y_without_menu = info.mode ~= '' and info.pum_visible == 0
      vim.schedule(function() -- this key's CompleteDone, if any, has run
        ctrl_y_without_menu = false
      end)
      return '<C-y>'
    end, { expr = true, buffer = bufnr, desc = ours })
  end
  local function undo_ctrl_y()
    if not ctrl_y_without_menu then
      return
    end
    ctrl_y_without_menu = false
    -- Here the item is applied (vim.lsp.completion's handler ran first);
    -- i_CTRL-Y runs once this event is over.
    local row, col = unpack(vim.api.nvim_win_get_cursor(0))
    local line = vim.api.nvim_get_current_line()
    vim.schedule(function()
      local now_row, now_col = unpack(vim.api.nvim_win_get_cursor(0))
      local now = vim.api.nvim_get_current_line()
      if now_row == row and now_col > col and now:sub(1, col) .. now:sub(now_col + 1) == line then
        vim.api.nvim_buf_set_text(bufnr, row - 1, col, row - 1, now_col, { '' })
        vim.api.nvim_win_set_cursor(0, { row, col })
      end
    end)
  end
  local inline = opts.inline and vim.lsp.inline_completion
  vim.api.nvim_create_autocmd('CompleteDone', {
    group = vim.api.nvim_create_augroup('qwen_lsp_buf_' .. bufnr, { clear = true }),
    buffer = bufnr,
    callback = function()
      undo_ctrl_y()
      if inline then
        -- Once a menu item is in the line, the ghost text shown before the
        -- menu opened is stale: Neovim would draw it again after the
        -- inserted text (a multi-line item then showed its lines twice).
        -- Dismiss it; the next request asks at the new cursor.
        vim.lsp.inline_completion.get({ bufnr = bufnr, on_accept = function() end })
      end
    end,
  })
  if opts.inline and vim.lsp.inline_completion then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    local keys = opts.keys
    vim.api.nvim_create_autocmd({ 'TextChangedI', 'CursorMovedI' }, {
      group = vim.api.nvim_create_augroup('qwen_lsp_ghost_' .. bufnr, { clear = true }),
      buffer = bufnr,
      callback = function()
        drop_stale_ghost(bufnr)
      end,
    })
    vim.keymap.set('i', keys.accept, function()
      drop_stale_ghost(bufnr)
      local known = inline_state(bufnr) ~= nil
      local accepted = vim.lsp.inline_completion.get(known and {
        bufnr = bufnr,
        -- Stale by now (a key typed meanwhile): the buffer is left alone.
        on_accept = function(item)
          accept_after_typing(bufnr, item)
        end,
      } or nil)
      if not accepted then
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
    handlers = { ['window/showMessage'] = M.show_message },
  })
  local group = vim.api.nvim_create_augroup('qwen_lsp', { clear = true })
  if opts.inline and vim.lsp.inline_completion then
    M.define_highlights()
    -- :colorscheme clears every highlight group first.
    vim.api.nvim_create_autocmd('ColorScheme', { group = group, callback = M.define_highlights })
  end
  vim.api.nvim_create_autocmd('LspAttach', {
    group = group,
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
