from vlmtune_cli.cli import main

main()
