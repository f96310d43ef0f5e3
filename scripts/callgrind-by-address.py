#!/usr/bin/env python3
"""Reads a callgrind out file made with --dump-instr=yes: self cost by
instruction address, by function, and calls per function (the count of its
first instruction). Used by scripts/instructions; see there.

    callgrind-by-address.py OUT BINARY PACKETS TOP [FUNCTION-PATTERN...]

The format (valgrind's "Callgrind Format Specification"): cost lines are
"<address> <line> <cost>", each position absolute (0x...), relative to the
one before (+n, -n) or the same (*); names are compressed as "(id) name"
the first time and "(id)" after; the cost line after a "calls=" line is the
call's inclusive cost, not the caller's own, and is skipped here.
"""
import collections
import re
import subprocess
import sys

NAME_KINDS = {'ob': 'ob', 'cob': 'ob', 'fl': 'fl', 'fi': 'fl', 'fe': 'fl', 'cfi': 'fl', 'cfl': 'fl',
              'fn': 'fn', 'cfn': 'fn'}


def parse(path):
    names = {}
    own = collections.Counter()  # (object, function, address) -> cost
    position = [0, 0]
    obj = function = None
    after_call = False

    def name(kind, value):
        match = re.match(r'\((\d+)\)(?: (.*))?', value)
        if not match:
            return value
        key = (kind, match.group(1))
        if match.group(2) is not None:
            names[key] = match.group(2)
        return names.get(key, '?')

    def sub(token, index):
        if token == '*':
            return position[index]
        if token[0] in '+-':
            return position[index] + int(token, 0)
        return int(token, 0)

    with open(path) as lines:
        for line in lines:
            line = line.rstrip('\n')
            if not line or line[0] == '#':
                continue
            if line[0].isdigit() or line[0] in '+-*':
                fields = line.split()
                position[0], position[1] = sub(fields[0], 0), sub(fields[1], 1)
                if after_call:
                    after_call = False
                    continue
                own[(obj, function, position[0])] += int(fields[2]) if len(fields) > 2 else 0
            elif '=' in line:
                key, value = line.split('=', 1)
                if key == 'calls':
                    after_call = True
                elif key in NAME_KINDS:
                    resolved = name(NAME_KINDS[key], value)
                    if key == 'ob':
                        obj = resolved
                    elif key == 'fn':
                        function = resolved
    return own


def demangled(names):
    """Swift names, simplified (swift-demangle comes with the toolchain); as they are if it is missing."""
    names = list(names)
    for tool in (['swift-demangle'], ['/opt/swift/usr/bin/swift-demangle']):
        try:
            result = subprocess.run(tool + ['--simplified', '--compact'], input='\n'.join(names) + '\n',
                                    capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            continue
        lines = result.stdout.splitlines()
        if len(lines) == len(names):
            return dict(zip(names, lines))
    return {name: name for name in names}


def main():
    out, binary, packets, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    patterns = sys.argv[5:]
    own = parse(out)
    by_function = collections.Counter()
    for (obj, function, _), cost in own.items():
        by_function[(obj, function)] += cost
    symbols = {}
    for line in subprocess.run(['nm', binary], capture_output=True, text=True).stdout.splitlines():
        fields = line.split(' ', 2)
        if len(fields) == 3 and fields[0]:
            symbols[fields[2]] = int(fields[0], 16)
    base_name = binary.rsplit('/', 1)[-1]
    readable = demangled(function or '?' for (_, function) in by_function)
    total = sum(by_function.values())
    print(f'{total / packets:.1f} instructions per packet in all, by function (own cost):')
    print(f'{"per packet":>10} {"calls/pkt":>9} {"per call":>9}  object: function')
    for (obj, function), cost in by_function.most_common(top):
        calls = ''
        per_call = ''
        if obj and obj.endswith(base_name) and function in symbols:
            entry = own.get((obj, function, symbols[function]), 0)
            if entry:
                calls = f'{entry / packets:.3f}'
                per_call = f'{cost / entry:.0f}'
        short_obj = (obj or '?').rsplit('/', 1)[-1]
        print(f'{cost / packets:10.2f} {calls:>9} {per_call:>9}  {short_obj}: {readable[function or "?"][:150]}')
    for pattern in patterns:
        for (obj, function), cost in by_function.most_common():
            if not (obj and obj.endswith(base_name) and function in symbols
                    and (pattern in function or pattern in readable[function])):
                continue
            start = symbols[function]
            print(f'\n{readable[function]}: {cost / packets:.2f} per packet; count per packet, address, instruction')
            listing = subprocess.run(
                ['objdump', '-d', '--no-show-raw-insn', f'--start-address={start}',
                 f'--stop-address={start + 20000}', binary], capture_output=True, text=True).stdout
            inside = False
            for line in listing.splitlines():
                match = re.match(r'\s*([0-9a-f]+):\s*(.*)', line)
                if not match:
                    if line.strip().endswith('>:'):
                        if inside:
                            break
                        inside = True
                    continue
                address = int(match.group(1), 16)
                count = own.get((obj, function, address), 0)
                print(f'{count / packets:7.2f}  {address:x}  {match.group(2)[:120]}')


if __name__ == '__main__':
    main()
