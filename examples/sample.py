"""A small module to try qwen-lsp on: complete the body of `add`."""


def add(a, b):
    


print(add(2, 3))
