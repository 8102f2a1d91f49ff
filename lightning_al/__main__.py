from lightning_al.commands import main

if __name__ == "__main__":
    main()
