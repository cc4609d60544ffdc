from mailmux.gateway.cli import main

main()
