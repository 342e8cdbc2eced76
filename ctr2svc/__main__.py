from ctr2svc.cli import main

main()
