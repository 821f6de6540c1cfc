from attn_entropy_cli.cli import main

main()
