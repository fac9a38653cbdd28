-- Drives Neovim 0.11+/0.12 completion against qwen-lsp the way a user does
-- and records the buffer as JSON.
--
-- Setup is exactly what editors/README.md says: editors/nvim on the runtime
-- path and require('qwen_lsp').setup({ cmd = ... }) (with menu_autotrigger for
-- the autotrigger runs); nothing else is
-- configured (except 'completeopt' when QWEN_TEST_COMPLETEOPT is set). The
-- file comes from the command line. Then, at the end of QWEN_TEST_LINE:
--
--   QWEN_TEST_MODE=menu    'A', type QWEN_TEST_TYPE, then either <C-x><C-o>
--                          (QWEN_TEST_TRIGGER=omni) or nothing (=auto: the
--                          typed trigger character starts completion through
--                          vim.lsp.completion's autotrigger); wait until
--                          complete() holds the server's item (with the
--                          default 'completeopt' a single item is inserted
--                          without a visible menu), <C-n> if nothing is
--                          selected, <C-y> (QWEN_TEST_MENU_ACCEPT) so that
--                          vim.lsp.completion's CompleteDone handler applies
--                          the item, <Esc>.
--   QWEN_TEST_MODE=inline  'A', wait for vim.lsp.inline_completion's ghost
--                          text (extmarks in its namespace), press the accept
--                          key setup() mapped (<Tab>), wait for the text,
--                          <Esc>.
--
-- Every wait is bounded (a timer that gives up after QWEN_TEST_TIMEOUT_MS) and
-- the keys go through nvim_feedkeys with remapping, as if typed.
local function env(name)
  local value = os.getenv(name)
  assert(value, name .. ' is not set')
  return value
end

local out_path = env('QWEN_TEST_OUT')
local file = env('QWEN_TEST_FILE') -- also given on the command line
local row = tonumber(env('QWEN_TEST_LINE'))
local mode = env('QWEN_TEST_MODE')
local typed = os.getenv('QWEN_TEST_TYPE') or ''
local trigger = os.getenv('QWEN_TEST_TRIGGER') or 'omni'
local accept_key = os.getenv('QWEN_TEST_ACCEPT') or '<Tab>' -- README's default
local menu_accept = os.getenv('QWEN_TEST_MENU_ACCEPT') or '<C-y>'
local timeout_ms = tonumber(os.getenv('QWEN_TEST_TIMEOUT_MS') or '30000')

-- A user's own option, when the test asks for one (e.g. Nvim's documented
-- 'completeopt' for LSP completion: menuone,noselect,popup).
if os.getenv('QWEN_TEST_COMPLETEOPT') then
  vim.o.completeopt = os.getenv('QWEN_TEST_COMPLETEOPT')
end

-- The README's setup, nothing more.
vim.opt.runtimepath:append(env('QWEN_TEST_RTP'))
require('qwen_lsp').setup({
  cmd = vim.fn.json_decode(env('QWEN_TEST_CMD')),
  -- The autotrigger runs ask for the menu by itself, beside the ghost text.
  menu_autotrigger = os.getenv('QWEN_TEST_TRIGGER') == 'auto' or nil,
})

-- Registered after setup(), so it runs after the project's LspAttach handler.
local attached = false
vim.api.nvim_create_autocmd('LspAttach', {
  callback = function(args)
    local client = vim.lsp.get_client_by_id(args.data.client_id)
    if client and client.name == 'qwen-lsp' then
      attached = true
    end
  end,
})

local v = vim.version()
local result = {
  version = ('%d.%d.%d'):format(v.major, v.minor, v.patch),
  prerelease = v.prerelease or vim.NIL,
}

local function finish(err)
  result.error = err or vim.NIL
  result.lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  local fd = assert(io.open(out_path, 'w'))
  fd:write(vim.json.encode(result))
  fd:close()
  vim.cmd('qa!')
end

local function feed(keys)
  -- 'm': use mappings (the accept key is a buffer mapping); 't': as typed.
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), 'mt', false)
end

-- The script runs as a coroutine; wait() suspends it until cond() holds,
-- checked every 20 ms from a timer (typeahead and LSP replies are handled in
-- between, which vim.wait() would not do for fed keys), or fails the run.
local script
local function resume()
  local ok, err = coroutine.resume(script)
  if not ok then
    finish('driver error: ' .. tostring(err))
  end
end

local function wait(label, cond)
  local timer = assert(vim.uv.new_timer())
  local waited = 0
  timer:start(20, 20, vim.schedule_wrap(function()
    if timer:is_closing() then
      return
    end
    waited = waited + 20
    local ok, done = pcall(cond)
    if ok and done then
      timer:close()
      resume()
    elseif not ok or waited > timeout_ms then
      timer:close()
      finish((ok and 'timed out waiting for ' or 'error while waiting for ') .. label
        .. (ok and '' or (': ' .. tostring(done))))
    end
  end))
  coroutine.yield()
end

local function lsp_item(complete_item)
  local data = complete_item and complete_item.user_data
  return type(data) == 'table' and vim.tbl_get(data, 'nvim', 'lsp', 'completion_item') or nil
end

local function menu()
  wait('the LSP completion', function()
    for _, it in ipairs(vim.fn.complete_info({ 'items' }).items) do
      if lsp_item(it) then
        return true
      end
    end
    return false
  end)
  local info = vim.fn.complete_info({ 'items', 'selected', 'pum_visible', 'mode' })
  result.pum_visible = info.pum_visible
  result.completeopt = vim.o.completeopt
  result.complete_mode = info.mode
  result.menu = vim.tbl_map(function(it)
    return { word = it.word, abbr = it.abbr, item = lsp_item(it) or vim.NIL }
  end, info.items)
  result.selected_before = info.selected
  if info.selected < 0 then
    feed('<C-n>')
    wait('an item to be selected', function()
      return vim.fn.complete_info({ 'selected' }).selected >= 0
    end)
  end
  local changes = vim.b.changedtick
  feed(menu_accept)
  -- CompleteDone (reason "accept") applies the item; no resolve request, so
  -- it happens before the next event-loop turn.
  wait('the completion to be applied', function()
    return vim.fn.pumvisible() == 0 and vim.b.changedtick ~= changes
  end)
end

local function inline()
  local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
  assert(ns, 'vim.lsp.inline_completion has no namespace')
  local marks
  wait('the ghost text', function()
    marks = vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
    return #marks > 0
  end)
  local mark = marks[1]
  local shown = { table.concat(vim.tbl_map(function(chunk)
    return chunk[1]
  end, mark[4].virt_text or {})) }
  for _, vline in ipairs(mark[4].virt_lines or {}) do
    table.insert(shown, table.concat(vim.tbl_map(function(chunk)
      return chunk[1]
    end, vline)))
  end
  result.ghost = { row = mark[2], col = mark[3], lines = shown }
  local before = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  feed(accept_key)
  wait('the suggestion to be inserted', function()
    return not vim.deep_equal(before, vim.api.nvim_buf_get_lines(0, 0, -1, false))
  end)
end

script = coroutine.create(function()
  assert(vim.api.nvim_buf_get_name(0) == vim.fn.fnamemodify(file, ':p'), 'file not opened')
  wait('the client to attach', function()
    local clients = vim.lsp.get_clients({ bufnr = 0, name = 'qwen-lsp' })
    return attached and #clients == 1 and clients[1].initialized
  end)
  local client = vim.lsp.get_clients({ bufnr = 0, name = 'qwen-lsp' })[1]
  result.offset_encoding = client.offset_encoding
  result.omnifunc = vim.bo.omnifunc
  result.inline_enabled = vim.lsp.inline_completion ~= nil
    and vim.lsp.inline_completion.is_enabled({ bufnr = 0 })
  result.tab_mapping = vim.fn.maparg('<Tab>', 'i', false, true).desc or vim.NIL
  local line = vim.api.nvim_buf_get_lines(0, row - 1, row, false)[1]
  vim.api.nvim_win_set_cursor(0, { row, #line })
  -- setup() reports where the cursor settles (qwen/cursor): the server says
  -- where it believes the user is in qwen.status.
  wait('the server to hear where the cursor is', function()
    local reply = client:request_sync('workspace/executeCommand',
      { command = 'qwen.status', arguments = {} }, 1000, 0)
    local place = reply and reply.result and reply.result.place
    if type(place) == 'table' and place.offset > 0 then
      result.place_offset = place.offset
      return true
    end
    return false
  end)
  feed('A' .. typed)
  wait('insert mode and the typed text', function()
    return vim.fn.mode() == 'i' and vim.api.nvim_get_current_line() == line .. typed
  end)
  if mode == 'menu' then
    if trigger == 'omni' then
      feed('<C-x><C-o>')
    end
    menu()
  elseif mode == 'inline' then
    inline()
  else
    error('unknown QWEN_TEST_MODE ' .. mode)
  end
  result.cursor = vim.api.nvim_win_get_cursor(0)
  feed('<Esc>')
  wait('normal mode', function()
    return vim.fn.mode() == 'n'
  end)
  finish(nil)
end)

-- The file is opened from the command line after this init file, like a
-- user's (filetype detection only starts once init files have run).
vim.api.nvim_create_autocmd('VimEnter', {
  once = true,
  callback = resume,
})
