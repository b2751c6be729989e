"""Lemur Serve: train, serve, deploy and load-test the Lemur and Lemur-chat LLMs.

One import name; each wing keeps its own top-level folder (pyproject's
package-dir). From the top down, each layer imports only the ones below it
(the contract in pyproject.toml, checked by tests/unit/test_layers.py):

    lemur.cli                            the `lemur` command
    lemur.plan | lemur.env_report        tools: deployment sizing, bug reports
    lemur.server | lemur.training | lemur.loadtest
                                         the gateway, the recipe, the load tester
    lemur.kernels                        Triton kernels and their torch twins
    lemur.chat_format | lemur.hardware   the model's contract; CPU and GPU facts
"""

__version__ = "0.1.0"
