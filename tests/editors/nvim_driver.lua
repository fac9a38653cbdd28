-- Drives Neovim's own completion path against qwen-lsp and records the buffer.
--
-- Set up exactly as editors/README.md says (require('qwen_lsp').setup), open
-- the file, put the cursor at the end of the given line, press <C-x><C-o>
-- (the LSP omnifunc sends textDocument/completion and calls complete() with
-- the answer), wait until complete() has inserted the item, leave insert
-- mode (accepting it, CompleteDone fires) and write the buffer as JSON.
local function env(name)
  local value = os.getenv(name)
  assert(value, name .. ' is not set')
  return value
end
local out_path = env('QWEN_TEST_OUT')
local file = env('QWEN_TEST_FILE')
local row = tonumber(env('QWEN_TEST_LINE'))
local accept_keys = os.getenv('QWEN_TEST_ACCEPT') or '<Esc>'

vim.opt.runtimepath:prepend(env('QWEN_TEST_RTP'))
vim.cmd('filetype on')
require('qwen_lsp').setup({ cmd = vim.fn.json_decode(env('QWEN_TEST_CMD')) })

local result = { version = tostring(vim.version().major) .. '.' .. vim.version().minor .. '.' .. vim.version().patch }

local function finish(err)
  result.error = err or vim.NIL
  result.lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  result.cursor = vim.api.nvim_win_get_cursor(0)
  local fd = assert(io.open(out_path, 'w'))
  fd:write(vim.fn.json_encode(result))
  fd:close()
  vim.cmd('qa!')
end

local function keys(s)
  return vim.api.nvim_replace_termcodes(s, true, false, true)
end

-- Check cond every 20 ms; then run next (timers keep running in insert mode).
local function poll(label, cond, next_step)
  local timer = vim.loop.new_timer()
  local tries = 0
  timer:start(20, 20, vim.schedule_wrap(function()
    tries = tries + 1
    if cond() then
      timer:stop()
      timer:close()
      next_step()
    elseif tries > 1000 then
      timer:stop()
      timer:close()
      finish('timed out waiting for ' .. label)
    end
  end))
end

if os.getenv('QWEN_TEST_DEBUG') then dofile(os.getenv('QWEN_TEST_DEBUG')) end
vim.cmd('edit ' .. vim.fn.fnameescape(file))

local function ready()
  for _, client in pairs(vim.lsp.buf_get_clients(0)) do
    if client.initialized then
      return true
    end
  end
  return false
end

poll('the client to initialize', ready, function()
  local before = vim.api.nvim_buf_get_lines(0, row - 1, row, false)[1]
  vim.api.nvim_win_set_cursor(0, { row, #before })
  vim.api.nvim_feedkeys(keys('A<C-x><C-o>'), 'n', false)
  poll('complete() to insert the item', function()
    return vim.fn.mode() == 'i' and vim.api.nvim_get_current_line() ~= before
  end, function()
    result.pumvisible = vim.fn.pumvisible()
    vim.api.nvim_feedkeys(keys(accept_keys), 'n', false)
    poll('normal mode', function()
      return vim.fn.mode() == 'n'
    end, function()
      finish(nil)
    end)
  end)
end)
