"""The package's shape: short functions, few top-level modules, and a README
code map that names what is there."""

import ast
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'xmcgan_jax')


def test_no_function_over_80_lines():
  long = []
  for path in glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True):
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > 80:
          long.append(f'{os.path.relpath(path, ROOT)}:{node.name} ({lines})')
  assert not long, long


def _top_level():
  modules = sorted(m for m in os.listdir(PACKAGE)
                   if m.endswith('.py') and m != '__init__.py')
  folders = sorted(d for d in os.listdir(PACKAGE)
                   if os.path.exists(os.path.join(PACKAGE, d, '__init__.py')))
  return modules, folders


def test_at_most_8_top_level_modules():
  modules, _ = _top_level()
  assert len(modules) <= 8, modules


def test_readme_code_map_matches_the_tree():
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    text = f.read()
  code_map = text.split('\n## Code map\n', 1)[1].split('\n## ', 1)[0]
  modules, folders = _top_level()
  for name in modules:
    assert f'`{name}`' in code_map or f'`xmcgan_jax/{name}`' in code_map, name
  for name in folders:
    assert f'`xmcgan_jax/{name}/`' in code_map, name
  for path in re.findall(r'`(xmcgan_jax/[\w/.]*)`', code_map):
    assert os.path.exists(os.path.join(ROOT, path)), path
  for folder in folders:  # Modules a folder's row names exist in it.
    row = [r for r in code_map.splitlines()
           if r.startswith(f'| `xmcgan_jax/{folder}/`')][0]
    for name in re.findall(r'`(\w+\.py)`', row):
      assert os.path.exists(os.path.join(PACKAGE, folder, name)), (folder,
                                                                  name)


# Imports flow one way: main -> training / sampling / eval -> models / text /
# data -> the top-level building blocks. Each folder may import nothing from
# the folders listed against it.
_FORBIDDEN = {
    'sampling': ('training', 'eval'),
    'eval': ('training',),
    'models': ('training', 'sampling', 'eval', 'data'),
    'text': ('training', 'sampling', 'eval', 'models', 'data'),
    'data': ('training', 'sampling', 'eval', 'models'),
}


def _imported_modules(path):
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      for alias in node.names:
        yield f'{node.module}.{alias.name}'
    elif isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name


def test_imports_flow_one_way():
  upward = []
  for folder, banned in _FORBIDDEN.items():
    for path in glob.glob(os.path.join(PACKAGE, folder, '*.py')):
      for module in _imported_modules(path):
        for other in banned:
          if module.startswith(f'xmcgan_jax.{other}'):
            upward.append(f'{os.path.relpath(path, ROOT)} imports {module}')
  assert not upward, upward
  # The top-level building blocks import no folder except where named.
  for name in ('losses', 'objectives', 'parallel', 'errors', 'config_base',
               'run_dir'):
    path = os.path.join(PACKAGE, name + '.py')
    if not os.path.exists(path):
      continue
    for module in _imported_modules(path):
      assert not re.match(r'xmcgan_jax\.(training|sampling|eval|data|models)',
                          module), (name, module)
