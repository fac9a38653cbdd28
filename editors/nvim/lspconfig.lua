-- qwen-lsp through nvim-lspconfig, for setups that already use it on
-- Neovim 0.8-0.10. On 0.11+ prefer require('qwen_lsp').setup() (which uses
-- vim.lsp.config / vim.lsp.enable). Completion is the omnifunc
-- (<C-x><C-o>); the CompleteDone hook from lua/qwen_lsp makes multi-line
-- suggestions land as real lines (complete() alone would insert ^@).
vim.opt.runtimepath:append('/path/to/qwen-lsp/editors/nvim')

local configs = require('lspconfig.configs')
if not configs.qwen_lsp then
  configs.qwen_lsp = {
    default_config = {
      cmd = { 'qwen-lsp' },
      filetypes = { 'python', 'lua', 'javascript', 'typescript', 'go', 'rust', 'c', 'cpp', 'java', 'sh' },
      root_dir = require('lspconfig.util').root_pattern('.git'),
      single_file_support = true,
      -- Answers workspace/configuration for the section "qwen".
      settings = { qwen = { model = 'qwen3-coder-flash' } },
    },
  }
end

require('lspconfig').qwen_lsp.setup({
  on_attach = function(_, bufnr)
    vim.bo[bufnr].omnifunc = 'v:lua.vim.lsp.omnifunc'
  end,
})

vim.api.nvim_create_autocmd('CompleteDone', {
  callback = function()
    require('qwen_lsp').fix_multiline_insert()
  end,
})
