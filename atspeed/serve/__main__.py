from atspeed.serve.main import main

main()
