"""The bash completion script of ``openbits completion bash``.

click's own script adds each candidate to COMPREPLY unquoted, so a display name with a space
("my job") came back as two words and a name holding ``*`` was globbed. Here a candidate is
one word, shell-quoted (``my\\ job``) unless the word being completed opened a quote, which
readline then closes itself. zsh's and fish's scripts quote already and stay click's.
"""

from __future__ import annotations

from typing import ClassVar

from click.shell_completion import BashComplete

_SOURCE_BASH = """\
%(complete_func)s() {
    local IFS=$'\\n'
    local response current=${COMP_WORDS[COMP_CWORD]}

    response=$(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD=$COMP_CWORD %(complete_var)s=bash_complete $1)

    for completion in $response; do
        IFS=',' read -r type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            if [[ $current == [\\"\\']* ]]; then
                COMPREPLY+=("$value")
            else
                COMPREPLY+=("$(printf '%%q' "$value")")
            fi
        fi
    done

    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""


class QuotingBashComplete(BashComplete):
    """click's bash completion with each candidate kept one word."""

    source_template: ClassVar[str] = _SOURCE_BASH
